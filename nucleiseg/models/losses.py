"""The paper's loss (section III-C, equations 1-3): binary cross-entropy plus Dice loss with smooth 1.

    BCE  = -mean(y log p + (1 - y) log(1 - p))
    Dice = (2 sum(y p) + smooth) / (sum(y) + sum(p) + smooth)
    L    = BCE + (1 - Dice)

over all pixels of the batch, with p = sigmoid(logits). BCE is torch's (computed from logits, numerically
stable). The Dice term is written out rather than taken from segmentation-models-pytorch because smp's
DiceLoss differs from equation 2 in two ways: (1) since smp 0.5 it computes Dice through the Tversky form
(I + s) / (I + FP/2 + FN/2 + s) = (2I + 2s) / (sum(y) + sum(p) + 2s), so its ``smooth=1`` is the paper's
smooth 2; (2) it sets the loss to 0 when a batch has no nucleus pixel, where equation 2 gives
1 - smooth / (sum(p) + smooth), silently ceasing to penalise false positives on empty tiles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor:
    """``1 - Dice`` over the whole batch; ``logits`` and ``target`` (0/1) share a shape."""
    probabilities = torch.sigmoid(logits.float()).flatten()
    target = target.float().flatten()
    intersection = (probabilities * target).sum()
    return 1.0 - (2.0 * intersection + smooth) / (probabilities.sum() + target.sum() + smooth)


class BCEDiceLoss(nn.Module):
    """``BCE + Dice loss`` of the paper; returns the total and its two parts."""

    def __init__(self, smooth: float) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        dice = dice_loss(logits, target, self.smooth)
        return {"loss": bce + dice, "bce": bce, "dice_loss": dice}


class SegmentationLoss(nn.Module):
    """The paper's loss on the nucleus channel, plus, for the distance head, ``distance_weight`` x the mean squared
    error between the predicted distance map (sigmoid of channel 1) and each nucleus's normalised distance
    transform (Naylor et al., IEEE TMI 2018 regress it with a squared error too)."""

    def __init__(self, smooth: float, distance_weight: float) -> None:
        super().__init__()
        self.mask_loss = BCEDiceLoss(smooth)
        self.distance_weight = distance_weight

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, distance: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``logits BxCxHxW``; ``target`` 0/1 ``Bx1xHxW``; ``distance`` ``Bx1xHxW`` in [0, 1] when C == 2."""
        losses = self.mask_loss(logits[:, :1], target)
        if logits.shape[1] > 1:
            if distance is None:
                raise ValueError("a distance head needs the distance target of each batch")
            regression = F.mse_loss(torch.sigmoid(logits[:, 1:2].float()), distance.float())
            losses["distance_loss"] = regression
            losses["loss"] = losses["loss"] + self.distance_weight * regression
        return losses
