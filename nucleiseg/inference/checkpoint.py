"""Load a trained model from a checkpoint without executing pickled code.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers; the architecture is rebuilt from
the checkpoint's hyper-parameters by the one model factory, then the weights are loaded strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nucleiseg.config.plain import plain
from nucleiseg.models.factory import SegmentationNet, create_model
from nucleiseg.util.errors import NucleisegError, first_line
from nucleiseg.util.writing import write_bytes_atomic

MODEL_CHECKPOINT_KEY = "nucleiseg_model_checkpoint"  # marks a finished run's weights-only checkpoint (format 1)


class CheckpointError(NucleisegError):
    """A checkpoint cannot be read or does not fit the architecture it names."""


SAFETENSORS_KEY = "nucleiseg"  # the hyper-parameters, as JSON, in a .safetensors file's metadata


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and hyper-parameters of a model written by :func:`write_safetensors`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(error)})") from None
    if SAFETENSORS_KEY not in metadata:
        raise CheckpointError(
            f"{path}: safetensors without nucleiseg's metadata; expected a file `nucleiseg export` wrote"
        )
    return {f"model.{k}": v for k, v in state.items()}, json.loads(metadata[SAFETENSORS_KEY])


def write_safetensors(path: str | Path, model: torch.nn.Module, hparams: Any) -> Path:
    """The weights as safetensors (no pickle: nothing in the file can run), hyper-parameters in its metadata."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {SAFETENSORS_KEY: json.dumps(plain(hparams), sort_keys=True)}
    write_bytes_atomic(path, save(state, metadata=metadata))
    return Path(path)


def load_checkpoint(path: str | Path) -> tuple[SegmentationNet, dict[str, Any]]:
    """Return ``(model in eval mode on CPU, hyper-parameters)`` from a nucleiseg checkpoint (``.ckpt``, loaded
    weights-only) or a ``.safetensors`` model."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        state_dict, hparams = _read_safetensors(path)
        return _build(path, state_dict, hparams)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling refusals and corrupt files alike
        raise CheckpointError(
            f"{path}: cannot load safely as a checkpoint ({first_line(error)}); "
            "expected a .ckpt written by nucleiseg training"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path}: not a nucleiseg training checkpoint (no state_dict/hyper_parameters)")
    return _build(path, checkpoint["state_dict"], dict(checkpoint["hyper_parameters"]))


def _build(path: Path, state_dict: dict[str, torch.Tensor], hparams: dict[str, Any]) -> tuple[SegmentationNet, dict]:
    if "encoder" not in hparams:
        raise CheckpointError(f"{path}: checkpoint hyper-parameters name no encoder; found {sorted(hparams)}")
    try:  # weights come from the checkpoint, never from ImageNet again
        model = create_model(
            hparams["encoder"],
            pretrained=False,
            head=hparams.get("head", "binary"),
            unet_widths=hparams.get("unet_widths"),
        )
    except NucleisegError as error:
        raise CheckpointError(f"{path}: {error}") from None
    state = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: weights do not fit encoder={hparams['encoder']} ({first_line(error)})"
        ) from None
    return model.eval(), hparams


def _save_atomic(payload: dict, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def write_model_checkpoint(path: str | Path, model: torch.nn.Module, hparams: Any) -> Path:
    """The checkpoint a finished run keeps: weights and hyper-parameters only (no optimizer state), in the
    layout :func:`load_checkpoint` reads (``state_dict`` keys ``model.*``, ``hyper_parameters``)."""
    path = Path(path)
    state = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _save_atomic({"state_dict": state, "hyper_parameters": plain(hparams), MODEL_CHECKPOINT_KEY: 1}, path)
    return path


def update_hyperparameters(path: str | Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``path`` (atomically) with ``updates`` merged into its hyper-parameters; return the previous
    values of the keys updated (so what was replaced can be recorded)."""
    path = Path(path)
    load_checkpoint(path)  # refuses unsafe or foreign files with a named error before anything is written
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    previous = {k: checkpoint["hyper_parameters"].get(k) for k in updates}
    checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], **plain(updates)}
    _save_atomic(checkpoint, path)
    return previous
