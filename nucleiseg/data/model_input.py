"""The one place pixel values are scaled for the models: kept apart from the DataModule, so inference (predict,
slides, the exported models' checks) does not import Lightning just to divide by 255."""

from __future__ import annotations

import torch


def to_model_input(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``Bx3xHxW`` -> float32 in [0, 1]; float input is taken as already scaled."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image
