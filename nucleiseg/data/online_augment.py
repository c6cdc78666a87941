"""Online augmentation beyond the paper, applied to whole batches on the training device with kornia.

Geometric transforms (flips, rotation, elastic) move image, instance mask and distance target together (the mask
with nearest-neighbour, image and distance map with bilinear sampling: flips and rotations keep distances
exact; an elastic warp bends them slightly, as it bends the nuclei); colour transforms (brightness/contrast/
saturation/hue jitter and haematoxylin-eosin-DAB jitter) touch the image only.
"""

from __future__ import annotations

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

    def __init__(self, sigma: float, p: float) -> None:
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
    """Batch augmentation, the ``data.online_augment`` group's ``_target_`` (its YAML holds the defaults; its
    ``enabled`` switch is the assembly's, not an argument): probabilities, 0 turns a transform off."""

    def __init__(
        self,
        *,
        hflip: float,
        vflip: float,
        rotate: float,
        rotate_degrees: float,
        elastic: float,
        colour_jitter: float,
        hed_jitter: float,
        hed_sigma: float,
    ) -> None:
        super().__init__()
        geometric = []
        if hflip:
            geometric.append(K.RandomHorizontalFlip(p=hflip))
        if vflip:
            geometric.append(K.RandomVerticalFlip(p=vflip))
        if rotate:
            geometric.append(K.RandomRotation(degrees=rotate_degrees, p=rotate))
        if elastic:
            geometric.append(K.RandomElasticTransform(p=elastic))
        # the instance labels and the classes move as masks (nearest), the distance map like the image (bilinear)
        self.geometric = K.AugmentationSequential(*geometric, data_keys=None) if geometric else None
        colour = []
        if colour_jitter:
            colour.append(K.ColorJiggle(0.1, 0.1, 0.1, 0.02, p=colour_jitter))
        self.colour = K.AugmentationSequential(*colour, data_keys=["input"]) if colour else None
        self.hed = RandomHEDJitter(hed_sigma, hed_jitter) if hed_jitter else None

    @torch.no_grad()
    def forward(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        distance: torch.Tensor | None = None,
        types: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``image float32 Bx3xHxW`` in [0, 1], ``mask int32 BxHxW`` labels (and ``distance float32 BxHxW``,
        ``types int32 BxHxW`` classes) -> ``{"image", "mask"[, "distance"][, "types"]}``, augmented."""
        out: dict[str, torch.Tensor] = {}
        if self.geometric is not None:
            labels = mask[:, None].float() if types is None else torch.stack([mask, types], 1).float()
            extra = [distance[:, None]] if distance is not None else []
            keys = ["input", "mask", *(["input"] * len(extra))]  # the distance map moves like the image
            moved = self.geometric(image, labels, *extra, data_keys=keys)
            image, labels = moved[0], moved[1].round().to(torch.int32)
            mask = labels[:, 0]
            if types is not None:
                types = labels[:, 1]
            if distance is not None:
                distance = moved[2][:, 0]
        if self.colour is not None:
            image = self.colour(image)
        if self.hed is not None:
            image = self.hed(image)
        out["image"], out["mask"] = image.clamp(0, 1), mask
        if distance is not None:
            out["distance"] = distance
        if types is not None:
            out["types"] = types
        return out
