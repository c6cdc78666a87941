"""Geometric transforms of the protocol, with kornia: resizing and the paper's Algorithm 1 augmentation.

Images are ``uint8 HxWx3`` in and out; masks ``int32 HxW`` instance labels in and out. Images are resampled
with area (down-sampling) or bilinear (rotation) interpolation; masks always with nearest neighbour, so
instance labels survive unchanged.
"""

from __future__ import annotations

import kornia.geometry.transform as KT
import numpy as np
import torch
from skimage.segmentation import relabel_sequential

from nucleiseg.errors import ConfigError

KNOWN_AUGMENTATIONS = ("identity", "hflip", "vflip", "rotate45", "rotate90")


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.tensor(image).permute(2, 0, 1)[None].float()


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    # float32 holds integers exactly up to 2**24, far above any nucleus count in a tile
    return torch.tensor(mask)[None, None].float()


def _image_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _mask_array(tensor: torch.Tensor) -> np.ndarray:
    labels = tensor[0, 0].round().to(torch.int64).numpy()
    return relabel_sequential(labels)[0].astype(np.int32)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size x size``: area interpolation for the image, nearest neighbour for the labels."""
    if image.shape[:2] == (size, size):
        return image, mask
    resized_image = KT.resize(_image_tensor(image), (size, size), interpolation="area")
    resized_mask = KT.resize(_mask_tensor(mask), (size, size), interpolation="nearest")
    return _image_array(resized_image), _mask_array(resized_mask)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``uint8 HxWx3`` to ``height x width``: area interpolation when shrinking, bilinear when enlarging."""
    shrinking = height * width < image.shape[0] * image.shape[1]
    resized = KT.resize(_image_tensor(image), (height, width), interpolation="area" if shrinking else "bilinear")
    return _image_array(resized)


def augment_pair(image: np.ndarray, mask: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply one named augmentation (see ``KNOWN_AUGMENTATIONS``) to an image/mask pair."""
    if name not in KNOWN_AUGMENTATIONS:
        raise ConfigError(
            f"data.protocol.augment: unknown augmentation {name!r}; expected one of {KNOWN_AUGMENTATIONS}"
        )
    if name == "identity":
        return image, mask
    image_t, mask_t = _image_tensor(image), _mask_tensor(mask)
    if name == "hflip":
        image_t, mask_t = KT.hflip(image_t), KT.hflip(mask_t)
    elif name == "vflip":
        image_t, mask_t = KT.vflip(image_t), KT.vflip(mask_t)
    else:
        angle = torch.tensor([45.0 if name == "rotate45" else 90.0])
        # corners rotated in from outside the image are black in the image and background in the mask
        image_t = KT.rotate(image_t, angle, mode="bilinear", padding_mode="zeros")
        mask_t = KT.rotate(mask_t, angle, mode="nearest", padding_mode="zeros")
    return _image_array(image_t), _mask_array(mask_t)
