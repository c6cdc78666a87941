"""Online augmentation beyond the paper, applied to whole batches on the training device with kornia.

Geometric transforms (flips, rotation, elastic) move image, instance mask and distance target together (the mask
with nearest-neighbour, image and distance map with bilinear sampling: flips and rotations keep distances
exact; an elastic warp bends them slightly, as it bends the nuclei); colour transforms (brightness/contrast/
saturation/hue jitter and haematoxylin-eosin-DAB jitter) touch the image only.
"""

from __future__ import annotations

from collections.abc import Mapping

import kornia.augmentation as K
import torch
from skimage.color import hed_from_rgb, rgb_from_hed
from torch import nn

_HED_FROM_RGB = torch.tensor(hed_from_rgb, dtype=torch.float32)
_RGB_FROM_HED = torch.tensor(rgb_from_hed, dtype=torch.float32)


class RandomHEDJitter(nn.Module):
    """Random scale and shift of each stain channel in HED space (Tellez et al., 2018).

    kornia has no stain-space augmentation, so this is our own: RGB -> optical density -> HED with
    scikit-image's colour-deconvolution matrices, perturb, and back. Images are ``float32 Bx3xHxW`` in [0, 1].
    """

    def __init__(self, sigma: float = 0.05, p: float = 0.5) -> None:
        super().__init__()
        self.sigma, self.p = sigma, p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch = image.shape[0]
        apply = torch.rand(batch, 1, 1, 1, device=image.device) < self.p
        optical_density = -torch.log(image.clamp_min(1e-6)).permute(0, 2, 3, 1)  # B H W 3
        stains = optical_density @ _HED_FROM_RGB.to(image)
        alpha = 1 + (torch.rand(batch, 1, 1, 3, device=image.device) * 2 - 1) * self.sigma
        beta = (torch.rand(batch, 1, 1, 3, device=image.device) * 2 - 1) * self.sigma
        jittered = torch.exp(-((stains * alpha + beta) @ _RGB_FROM_HED.to(image))).permute(0, 3, 1, 2)
        return torch.where(apply, jittered.clamp(0, 1), image)


class OnlineAugment(nn.Module):
    """Batch augmentation configured by ``data.online_augment`` (probabilities; 0 turns a transform off)."""

    def __init__(self, cfg: Mapping) -> None:
        super().__init__()
        geometric = []
        if cfg.get("hflip", 0):
            geometric.append(K.RandomHorizontalFlip(p=cfg["hflip"]))
        if cfg.get("vflip", 0):
            geometric.append(K.RandomVerticalFlip(p=cfg["vflip"]))
        if cfg.get("rotate", 0):
            geometric.append(K.RandomRotation(degrees=cfg.get("rotate_degrees", 180.0), p=cfg["rotate"]))
        if cfg.get("elastic", 0):
            geometric.append(K.RandomElasticTransform(p=cfg["elastic"]))
        # one sequence per set of targets: with and without the distance map (moved like the image, bilinear)
        self.geometric = (
            {
                False: K.AugmentationSequential(*geometric, data_keys=["input", "mask"]),
                True: K.AugmentationSequential(*geometric, data_keys=["input", "mask", "input"]),
            }
            if geometric
            else None
        )
        colour = []
        if cfg.get("colour_jitter", 0):
            colour.append(K.ColorJiggle(0.1, 0.1, 0.1, 0.02, p=cfg["colour_jitter"]))
        self.colour = K.AugmentationSequential(*colour, data_keys=["input"]) if colour else None
        self.hed = RandomHEDJitter(cfg.get("hed_sigma", 0.05), cfg["hed_jitter"]) if cfg.get("hed_jitter", 0) else None

    @torch.no_grad()
    def forward(
        self, image: torch.Tensor, mask: torch.Tensor, distance: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``image float32 Bx3xHxW`` in [0, 1], ``mask int32 BxHxW`` labels (and ``distance float32 BxHxW``)
        -> ``{"image", "mask"[, "distance"]}``, augmented."""
        out: dict[str, torch.Tensor] = {}
        if self.geometric is not None:
            extra = [distance[:, None]] if distance is not None else []
            moved = self.geometric[distance is not None](image, mask[:, None].float(), *extra)
            image, mask = moved[0], moved[1][:, 0].round().to(torch.int32)
            if distance is not None:
                distance = moved[2][:, 0]
        if self.colour is not None:
            image = self.colour(image)
        if self.hed is not None:
            image = self.hed(image)
        out["image"], out["mask"] = image.clamp(0, 1), mask
        if distance is not None:
            out["distance"] = distance
        return out
