"""Load a trained model from a checkpoint without executing pickled code.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers; the architecture is rebuilt from
the checkpoint's hyper-parameters by the one model factory, then the weights are loaded strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nucleiseg.errors import NucleisegError
from nucleiseg.models.factory import SegmentationNet, create_model


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
            f"{path}: cannot load safely as a checkpoint ({str(error).splitlines()[0][:200]}); "
            "expected a .ckpt written by nucleiseg training"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path}: not a nucleiseg training checkpoint (no state_dict/hyper_parameters)")
    hparams = dict(checkpoint["hyper_parameters"])
    if "encoder" not in hparams:
        raise CheckpointError(f"{path}: checkpoint hyper-parameters name no encoder; found {sorted(hparams)}")
    model = create_model(hparams["encoder"], pretrained=False)  # weights come from the checkpoint
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: weights do not fit encoder={hparams['encoder']} ({str(error).splitlines()[0][:200]})"
        ) from None
    return model.eval(), hparams
