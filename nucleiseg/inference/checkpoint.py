"""Load a trained model from a checkpoint without executing pickled code.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers; the architecture is rebuilt from
the checkpoint's hyper-parameters by the one model factory, then the weights are loaded strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nucleiseg.errors import NucleisegError, first_line
from nucleiseg.models.factory import SegmentationNet, create_model
from nucleiseg.writing import write_bytes_atomic

MODEL_CHECKPOINT_KEY = "nucleiseg_model_checkpoint"  # marks a finished run's weights-only checkpoint (format 1)


class CheckpointError(NucleisegError):
    """A checkpoint cannot be read or does not fit the architecture it names."""


def load_checkpoint(path: str | Path) -> tuple[SegmentationNet, dict[str, Any]]:
    """Return ``(model in eval mode on CPU, hyper-parameters)`` from a nucleiseg Lightning checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling refusals and corrupt files alike
        raise CheckpointError(
            f"{path}: cannot load safely as a checkpoint ({first_line(error)}); "
            "expected a .ckpt written by nucleiseg training"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path}: not a nucleiseg training checkpoint (no state_dict/hyper_parameters)")
    hparams = dict(checkpoint["hyper_parameters"])
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
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: weights do not fit encoder={hparams['encoder']} ({first_line(error)})"
        ) from None
    return model.eval(), hparams


def plain(value: Any) -> Any:
    """Hyper-parameters as the plain containers ``torch.load(weights_only=True)`` reads back (no OmegaConf)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


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
