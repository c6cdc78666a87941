"""Whole-image inference: padding, sliding windows with blended overlaps, and flip test-time augmentation.

The tiling engine under :class:`nucleiseg.inference.session.InferenceSession` (the one inference path of
evaluate, predict, training's test pass and the report): images of any size go in as ``uint8 HxWx3`` and come
out as activated maps ``float32 CxHxW`` (channel 0: nucleus probability; then the head's own maps, activated as
:func:`nucleiseg.models.heads.activate` says). Images larger than a tile are cut into overlapping
tiles whose predictions are blended with a weight that falls towards the tile edges, so the seams vanish and
memory is bounded by the tile batch, not the image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nucleiseg.data.model_input import to_model_input
from nucleiseg.data.stain import StainNormaliser
from nucleiseg.data.transforms import resize_image
from nucleiseg.models.heads import activate, unflip
from nucleiseg.util.devices import autocast
from nucleiseg.util.errors import ConfigError

DIVISOR = 32  # smp encoders down-sample 5 times; the plain U-Nets need 16


def blend_window(size: int, margin: int) -> np.ndarray:
    """``size x size`` weights: 1 in the centre, a linear ramp to a small floor over ``margin`` pixels."""
    ramp = np.ones(size, dtype=np.float32)
    if margin > 0:
        edge = np.linspace(0.05, 1.0, margin, dtype=np.float32)
        ramp[:margin], ramp[-margin:] = edge, edge[::-1]
    return np.outer(ramp, ramp)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


class Segmenter:
    """Predict with ``model`` (``float32 Bx3xHxW`` in [0,1] -> logits ``BxCxHxW``); the channels are activated as
    the ``head`` defines (:mod:`nucleiseg.models.heads`), and flipped predictions (TTA) are brought back to the
    input's frame the head's way (an HV map changes sign, StarDist's rays are mirrored)."""

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device,
        precision: str,
        *,
        tile_size: int,
        overlap: float,
        tta: bool,
        batch_size: int,
        channels_last: bool = False,
        normaliser: StainNormaliser | None = None,
        scale: float = 1.0,
        head: str = "binary",
        n_types: int = 0,
    ) -> None:
        """``normaliser``: stain normalisation applied to whole images in :meth:`probability` (the model's own,
        from its checkpoint); :meth:`probability_batch` takes already-prepared tensors. ``scale`` resamples
        whole images before the model (e.g. 0.5 for a model trained on images of half the resolution) and the
        probability map back to the input's size."""
        if not scale > 0:
            raise ConfigError(f"predict.scale={scale}: expected a positive factor")
        if tile_size % DIVISOR:
            raise ConfigError(f"tile_size={tile_size}: expected a multiple of {DIVISOR}")
        if not 0 <= overlap < 1:
            raise ConfigError(f"overlap={overlap}: expected 0 <= overlap < 1")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.precision, self.tile_size, self.overlap = precision, tile_size, overlap
        self.tta, self.batch_size = tta, batch_size
        self.normaliser = normaliser
        self.scale = float(scale)
        self.head, self.n_types = head, n_types

    @torch.inference_mode()
    def predict_batch(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` or ``float`` ``Bx3xHxW`` (H, W multiples of 32) -> activated maps ``float32 BxCxHxW``."""
        x = to_model_input(images.to(self.device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        flips = [(), (-1,), (-2,), (-2, -1)] if self.tta else [()]
        total = None
        with autocast(self.device, self.precision):
            for dims in flips:
                view = x.flip(dims) if dims else x
                maps = activate(self.head, self.model(view).float(), self.n_types)
                maps = unflip(self.head, maps, dims, self.n_types)
                total = maps if total is None else total + maps
        return total / len(flips)

    def probability_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Nucleus probabilities ``float32 BxHxW`` of a batch (channel 0 of :meth:`predict_batch`)."""
        return self.predict_batch(images)[:, 0]

    def _pad(self, tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
        pad_h, pad_w = height - tensor.shape[-2], width - tensor.shape[-1]
        if pad_h == 0 and pad_w == 0:
            return tensor
        mode = "reflect" if pad_h < tensor.shape[-2] and pad_w < tensor.shape[-1] else "replicate"
        # F.pad has no reflect mode for uint8; padding only copies values, so the cast back is exact
        return F.pad(tensor.float(), (0, pad_w, 0, pad_h), mode=mode).to(tensor.dtype)

    def probability(self, image: np.ndarray, progress: Callable[[int], object] | None = None) -> np.ndarray:
        """``uint8 HxWx3`` of any size -> nucleus probability map ``float32 HxW`` (the input's size)."""
        return self.predict(image, progress)[0]

    def predict(self, image: np.ndarray, progress: Callable[[int], object] | None = None) -> np.ndarray:
        """``uint8 HxWx3`` of any size -> activated maps ``float32 CxHxW`` (the input's size)."""
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ConfigError(f"expected an HxWx3 RGB image, got shape {image.shape}")
        if self.normaliser is not None:
            image = self.normaliser(image)
        if self.scale == 1.0:
            return self._predict_at_model_scale(image, progress)
        height, width = image.shape[:2]
        scaled = resize_image(image, *self._scaled(height, width))
        maps = torch.from_numpy(self._predict_at_model_scale(scaled, progress))[None]
        return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)[0].numpy()

    def _scaled(self, height: int, width: int) -> tuple[int, int]:
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def _predict_at_model_scale(self, image: np.ndarray, progress: Callable[[int], object] | None = None) -> np.ndarray:
        height, width = image.shape[:2]
        # np.require copies only inputs torch cannot share (read-only or non-contiguous)
        tensor = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)[None]
        tile = self.tile_size
        if height <= tile and width <= tile:
            padded = self._pad(tensor, -(-height // DIVISOR) * DIVISOR, -(-width // DIVISOR) * DIVISOR)
            return self.predict_batch(padded)[0, :, :height, :width].cpu().numpy()
        padded = self._pad(tensor, max(height, tile), max(width, tile))
        full_h, full_w = padded.shape[-2:]
        stride = max(DIVISOR, int(tile * (1 - self.overlap)) // DIVISOR * DIVISOR)
        window = blend_window(tile, (tile - stride) if self.overlap > 0 else 0)
        total: np.ndarray | None = None
        weight = np.zeros((full_h, full_w), dtype=np.float32)
        corners = [(y, x) for y in _starts(full_h, tile, stride) for x in _starts(full_w, tile, stride)]
        for first in range(0, len(corners), self.batch_size):
            chunk = corners[first : first + self.batch_size]
            batch = torch.cat([padded[..., y : y + tile, x : x + tile] for y, x in chunk])
            maps = self.predict_batch(batch).cpu().numpy()
            if total is None:
                total = np.zeros((maps.shape[1], full_h, full_w), dtype=np.float32)
            for (y, x), tile_maps in zip(chunk, maps, strict=True):
                total[:, y : y + tile, x : x + tile] += tile_maps * window
                weight[y : y + tile, x : x + tile] += window
            if progress is not None:
                progress(len(chunk))
        return (total / weight)[:, :height, :width]

    def n_tiles(self, height: int, width: int) -> int:
        """Number of tiles :meth:`probability` runs for an image of this size."""
        height, width = self._scaled(height, width)
        if height <= self.tile_size and width <= self.tile_size:
            return 1
        stride = max(DIVISOR, int(self.tile_size * (1 - self.overlap)) // DIVISOR * DIVISOR)
        return len(_starts(max(height, self.tile_size), self.tile_size, stride)) * len(
            _starts(max(width, self.tile_size), self.tile_size, stride)
        )
