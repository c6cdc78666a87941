"""Geometric transforms of the protocol, with kornia: resizing and the paper's Algorithm 1 augmentation.

Images are ``uint8 HxWx3`` in and out; masks ``int32 HxW`` instance labels in and out, or ``int32 2xHxW`` for a
typed dataset (instance labels, and each pixel's nucleus class), the two moved together. Images are resampled
with area (down-sampling) or bilinear (rotation) interpolation; masks always with nearest neighbour, so
instance labels and classes survive unchanged (instances are renumbered 1..n, classes kept as they are).
"""

from __future__ import annotations

import kornia.geometry.transform as KT
import numpy as np
import torch
from skimage.segmentation import relabel_sequential

from nucleiseg.util.errors import ConfigError

KNOWN_AUGMENTATIONS = ("identity", "hflip", "vflip", "rotate45", "rotate90")


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.tensor(image).permute(2, 0, 1)[None].float()


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    # float32 holds integers exactly up to 2**24, far above any nucleus count in a tile
    labels = torch.tensor(mask)
    return (labels[None] if labels.ndim == 2 else labels)[None].float()


def _image_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _mask_array(tensor: torch.Tensor) -> np.ndarray:
    labels = tensor[0].round().to(torch.int64).numpy()
    return _renumbered(labels if labels.shape[0] > 1 else labels[0])


def _renumbered(mask: np.ndarray) -> np.ndarray:
    """Instances renumbered 1..n (channel 0 of a typed mask; its classes as they are), as ``int32``."""
    if mask.ndim == 2:
        return relabel_sequential(mask)[0].astype(np.int32)
    out = mask.astype(np.int32)
    out[0] = relabel_sequential(mask[0])[0]
    return out


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size x size`` (the paper's protocol): area interpolation for the image, nearest neighbour for
    the labels."""
    if image.shape[:2] == (size, size):
        return image, mask
    resized_image = KT.resize(_image_tensor(image), (size, size), interpolation="area")
    resized_mask = KT.resize(_mask_tensor(mask), (size, size), interpolation="nearest")
    return _image_array(resized_image), _mask_array(resized_mask)


def rescale_pair(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a pair by ``factor`` (model pixels per source pixel), keeping its aspect: area interpolation
    when shrinking and bilinear when enlarging for the image, nearest neighbour for the labels."""
    height, width = max(1, round(mask.shape[-2] * factor)), max(1, round(mask.shape[-1] * factor))
    if (height, width) == mask.shape[-2:]:
        return image, mask
    resized_mask = KT.resize(_mask_tensor(mask), (height, width), interpolation="nearest")
    return resize_image(image, height, width), _mask_array(resized_mask)


def tile_origins(length: int, size: int) -> list[int]:
    """Origins of the fewest ``size``-long tiles that cover ``length``, spread evenly (neighbours overlap by less
    than a tile); ``[0]`` when the length fits in one tile."""
    if length <= size:
        return [0]
    count = -(-length // size)
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def tile_pair(image: np.ndarray, mask: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """Cut a pair into ``size x size`` tiles covering it (crops, never a squash): ``[(image, mask, (top, left))]``.
    A side shorter than ``size`` is padded at the bottom/right with white (slide background) and no nucleus."""
    height, width = mask.shape[-2:]
    tiles = []
    for top in tile_origins(height, size):
        for left in tile_origins(width, size):
            crop_image = np.full((size, size, 3), 255, np.uint8)
            crop_mask = np.zeros((*mask.shape[:-2], size, size), np.int32)
            part_image = image[top : top + size, left : left + size]
            crop_image[: part_image.shape[0], : part_image.shape[1]] = part_image
            crop_mask[..., : part_image.shape[0], : part_image.shape[1]] = mask[
                ..., top : top + size, left : left + size
            ]
            tiles.append((crop_image, _renumbered(crop_mask), (top, left)))
    return tiles


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
