"""Export a trained model to ONNX (dynamic batch and image size) and check it against PyTorch.

The exported graph takes ``float32 Bx3xHxW`` in [0, 1] (H, W multiples of 32) and returns nucleus logits
``Bx1xHxW``; the input normalisation is inside the graph, as in the PyTorch model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nucleiseg.inference.checkpoint import load_checkpoint
from nucleiseg.inference.export_model import check_image_size, check_writable, onnx_bytes
from nucleiseg.models.heads import activate
from nucleiseg.util.errors import NucleisegError, first_line
from nucleiseg.util.writing import write_bytes_atomic


def export_onnx(
    checkpoint: str | Path, out: str | Path, image_size: int = 256, opset: int = 17, check: bool = True
) -> dict[str, float | str]:
    """Write ``out`` (.onnx) from ``checkpoint``; with ``check``, compare onnxruntime and PyTorch on CPU."""
    out = Path(out).expanduser()
    if out.exists():
        raise NucleisegError(f"{out} exists; choose another path or remove it first")
    check_image_size(image_size)
    check_writable(out)
    model, hparams = load_checkpoint(checkpoint)
    example = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    onnx = onnx_bytes(model, example, "logits", opset=opset)
    try:
        write_bytes_atomic(out, onnx)
    except OSError as error:
        raise NucleisegError(f"--out {out}: could not be written ({first_line(error)}); nothing kept") from None
    result: dict[str, float | str] = {"onnx": str(out), "encoder": hparams["encoder"]}
    if check:
        result.update(compare_with_pytorch(out, model, image_size))
    return result


def compare_with_pytorch(onnx_path: Path, model: torch.nn.Module, image_size: int) -> dict[str, float]:
    """Max absolute difference of probabilities, onnxruntime (CPU) vs PyTorch, on a batch of 2 random images."""
    import onnxruntime

    images = torch.rand(2, 3, image_size + 32, image_size, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"image": images.numpy()})[0]
    with torch.no_grad():
        torch_logits = model.eval()(images).numpy()
    head = str(getattr(model, "head", "binary"))
    probabilities = [activate(head, torch.from_numpy(x))[:, :1].numpy() for x in (onnx_logits, torch_logits)]
    return {
        "max_prob_diff": float(np.abs(probabilities[0] - probabilities[1]).max()),
        "max_logit_diff": float(np.abs(onnx_logits - torch_logits).max()),
    }
