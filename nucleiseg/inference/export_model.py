"""``nucleiseg export``: a model for other tools (QuPath, DJL, ONNX Runtime, Triton), checked against ours.

- ``torchscript``: a traced module ``float32 Bx3xHxW`` in [0, 1] (H, W multiples of 32) -> activated maps
  ``BxCxHxW`` (channel 0 nucleus probability; channel 1 with the distance head, the normalised distance map),
  exactly what nucleiseg's inference computes before thresholding and separating nuclei.
- ``onnx``: the same graph in ONNX (dynamic batch and size), run by onnxruntime for the check.
- ``safetensors``: the weights and nucleiseg's hyper-parameters (no code at all): what nucleiseg ships and loads.

Every export is run once on random images and compared with the PyTorch model: the largest probability difference
is reported and must stay under :data:`TOLERANCE`, or the file is removed and the export refused.
"""

from __future__ import annotations

import io
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucleiseg.inference.checkpoint import load_checkpoint, write_safetensors
from nucleiseg.models.heads import activate
from nucleiseg.util.errors import NucleisegError, first_line
from nucleiseg.util.writing import write_bytes_atomic

FORMATS = ("torchscript", "onnx", "safetensors")
TOLERANCE = 1e-4
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx", "safetensors": ".safetensors"}
SIDE_MULTIPLE = 32  # the smp encoders halve the input five times (the plain U-Nets four): one rule for every model


def check_image_size(image_size: int) -> int:
    """``image_size`` when the model can take it (a positive multiple of 32), else a one-line error."""
    whole = isinstance(image_size, int) and not isinstance(image_size, bool)
    if whole and image_size >= SIDE_MULTIPLE and image_size % SIDE_MULTIPLE == 0:
        return image_size
    nearest = max(SIDE_MULTIPLE, round(image_size / SIDE_MULTIPLE) * SIDE_MULTIPLE) if whole else 256
    raise NucleisegError(
        f"--image-size {image_size}: expected a positive multiple of {SIDE_MULTIPLE} (the model's input sides are "
        f"multiples of {SIDE_MULTIPLE}), e.g. {nearest}"
    )


def check_writable(out: Path) -> Path:
    """``out``'s folder created and writable (tried with a file), or a one-line error naming ``--out``."""
    probe = out.parent / f".{out.name}.{secrets.token_hex(4)}.probe"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise NucleisegError(
            f"--out {out}: cannot write in {out.parent} ({error.strerror or type(error).__name__}); choose a folder "
            "you can write"
        ) from None
    return out


@contextmanager
def tracing_quietly() -> Iterator[None]:
    """Within the block, torch's TracerWarning (the trace keeps the U-Net's input-size check as a constant, which it
    is) is not shown; every other warning is, and the filters are as before after the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


class Activated(torch.nn.Module):
    """The network with the activation nucleiseg applies to its head (:func:`nucleiseg.models.heads.activate`):
    probabilities through a sigmoid, HV offsets and ray distances as they are. The separation into nuclei stays in
    nucleiseg (:mod:`nucleiseg.postprocess`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = str(getattr(model, "head", "binary"))
        self.n_types = int(getattr(model, "n_types", 0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return activate(self.head, self.model(image), self.n_types)


def _check_images() -> torch.Tensor:
    return torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))


def _reference(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        head, n_types = str(getattr(model, "head", "binary")), int(getattr(model, "n_types", 0))
        return activate(head, model.eval()(images), n_types).numpy()


def _run_export(fmt: str, path: Path, model: torch.nn.Module, hparams: dict, example: torch.Tensor) -> np.ndarray:
    """Write ``path`` in ``fmt``; return what the written file computes on the check images."""
    images = _check_images()
    if fmt == "safetensors":
        write_safetensors(path, model, _portable(hparams))
        reloaded, _ = load_checkpoint(path)
        return _reference(reloaded, images)
    wrapped = Activated(model).eval()
    if fmt == "torchscript":
        with torch.no_grad(), tracing_quietly():
            traced = torch.jit.trace(wrapped, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        write_bytes_atomic(path, buffer.getvalue())
        with torch.no_grad():
            return torch.jit.load(str(path)).eval()(images).numpy()
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        raise NucleisegError("onnxruntime is missing from this environment (a dependency of nucleiseg): reinstall it")
    import onnxruntime

    write_bytes_atomic(path, onnx_bytes(wrapped, example, "maps"))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images.numpy()})[0]


def onnx_bytes(model: torch.nn.Module, example: torch.Tensor, output: str, opset: int = 17) -> bytes:
    """``model`` as ONNX (``opset``; the TorchScript-based exporter: no onnxscript needed), one input ``image`` and
    one output ``output``, batch, height and width dynamic; torch's TracerWarning kept from users."""
    buffer = io.BytesIO()
    with tracing_quietly():
        torch.onnx.export(
            model.eval(),
            example,
            buffer,
            input_names=["image"],
            output_names=[output],
            opset_version=opset,
            dynamic_axes={
                "image": {0: "batch", 2: "height", 3: "width"},
                output: {0: "batch", 2: "height", 3: "width"},
            },
            dynamo=False,
        )
    return buffer.getvalue()


def _portable(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters without what only made sense on the training machine (its paths, its MLflow run)."""
    portable = {k: v for k, v in hparams.items() if k != "mlflow_run_id"}
    if isinstance(portable.get("data"), dict):
        portable["data"] = {k: v for k, v in portable["data"].items() if k != "folder"}
    return portable


def export_model(checkpoint: str | Path, fmt: str, out: str | Path, image_size: int = 256) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` in ``fmt`` (see :data:`FORMATS`); returns what was written and checked."""
    import hashlib

    if fmt not in FORMATS:
        raise NucleisegError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    if out.exists():
        raise NucleisegError(f"{out} exists; choose another path or remove it first")
    check_image_size(image_size)
    check_writable(out)
    model, hparams = load_checkpoint(checkpoint)
    example = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    try:
        exported = _run_export(fmt, out, model, hparams, example)
        difference = float(np.abs(exported - _reference(model, _check_images())).max())
        if difference > TOLERANCE:
            raise NucleisegError(
                f"{out}: the exported model's probabilities differ from nucleiseg's by {difference:.2e} "
                f"(more than {TOLERANCE:.0e}); not kept"
            )
    except OSError as error:  # the folder filled up or went read-only during the export
        out.unlink(missing_ok=True)
        raise NucleisegError(f"--out {out}: could not be written ({first_line(error)}); nothing kept") from None
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return {
        "file": str(out),
        "format": fmt,
        "encoder": hparams.get("encoder"),
        "head": hparams.get("head", "binary"),
        "channels": int(exported.shape[1]),
        "max_probability_difference": difference,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "size_bytes": out.stat().st_size,
        "input": "float32 Bx3xHxW RGB in [0, 1], H and W multiples of 32",
        "microns_per_pixel": (hparams.get("data") or {}).get("model_mpp"),
    }
