"""The paper's loss (section III-C, equations 1-3): binary cross-entropy plus Dice loss with smooth 1, and the
losses of the heads beyond the paper's (:class:`SegmentationLoss`).

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


TYPE_DICE_SMOOTH = 1.0e-3  # HoVer-Net's dice_loss smoothing for its type branch (models/hovernet/utils.py)


def type_loss_terms(type_logits: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cross-entropy, Dice loss)`` of class logits ``B x (K+1) x H x W`` against classes ``int BxHxW`` (0
    background), as HoVer-Net's type branch: the Dice loss of the softmax against the one-hot classes over the
    batch, ``1 - (2 I + s) / (P + T + s)`` per class, summed over the classes (HoVer-Net's ``dice_loss``)."""
    logits = type_logits.float()
    types = types.long()
    cross_entropy = F.cross_entropy(logits, types)
    probability = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(types, logits.shape[1]).permute(0, 3, 1, 2).float()
    intersection = (probability * one_hot).sum(dim=(0, 2, 3))
    total = probability.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    dice = (1.0 - (2.0 * intersection + TYPE_DICE_SMOOTH) / (total + TYPE_DICE_SMOOTH)).sum()
    return cross_entropy, dice


class SegmentationLoss(nn.Module):
    """The paper's loss on the nucleus channel (channel 0, every head), plus the loss of the head's own maps:

    - ``distance``: ``distance_weight`` x the mean squared error between the predicted distance map (sigmoid of
      channel 1) and each nucleus's normalised distance transform (Naylor et al., IEEE TMI 2018);
    - ``hv``: HoVer-Net's ``hv_mse_weight`` x MSE of the HV maps + ``hv_msge_weight`` x the squared error of their
      Sobel gradients on the nuclei (:func:`nucleiseg.models.hover_loss.hover_loss_terms`);
    - ``stardist``: StarDist's ``star_prob_weight`` x BCE of the object probability + ``star_dist_weight`` x the
      probability-weighted MAE of the ray distances (:func:`nucleiseg.models.star_loss.star_loss_terms`).

    - a typed model (``model.types``): ``type_weight`` x (cross-entropy + the Dice loss summed over classes) of the
      class logits against each pixel's nucleus class, as HoVer-Net's type branch is trained.

    The head is read from the maps the batch carries (``targets``), so one loss object serves every head."""

    def __init__(
        self,
        smooth: float,
        distance_weight: float,
        hv_mse_weight: float,
        hv_msge_weight: float,
        star_prob_weight: float,
        star_dist_weight: float,
        star_background_reg: float,
        type_weight: float,
    ) -> None:
        super().__init__()
        self.type_weight = type_weight
        self.mask_loss = BCEDiceLoss(smooth)
        self.distance_weight = distance_weight
        self.hv_weights = (hv_mse_weight, hv_msge_weight)
        self.star_weights = (star_prob_weight, star_dist_weight)
        self.star_background_reg = star_background_reg

    def record(self) -> dict[str, float]:
        """The loss's weights, for a checkpoint's hyper-parameters."""
        return {
            "smooth": self.mask_loss.smooth,
            "distance_weight": self.distance_weight,
            "hv_mse_weight": self.hv_weights[0],
            "hv_msge_weight": self.hv_weights[1],
            "star_prob_weight": self.star_weights[0],
            "star_dist_weight": self.star_weights[1],
            "star_background_reg": self.star_background_reg,
            "type_weight": self.type_weight,
        }

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        distance: torch.Tensor | None = None,
        targets: dict[str, torch.Tensor] | None = None,
        type_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``logits BxCxHxW``; ``target`` 0/1 ``Bx1xHxW``; ``distance`` ``Bx1xHxW`` in [0, 1] for the distance head;
        ``targets``: ``hv`` (``Bx2xHxW``) for the HV head, ``star_probability`` (``Bx1xHxW``) and
        ``star_distances`` (``B x n_rays x H x W``) for the StarDist head; ``type_logits`` ``B x (K+1) x H x W`` and
        ``targets["types"]`` (``int BxHxW``, 0 outside nuclei) for a typed model."""
        losses = self.mask_loss(logits[:, :1], target)
        targets = targets or {}
        if type_logits is not None:
            cross_entropy, dice = type_loss_terms(type_logits, targets["types"])
            losses.update(type_ce=cross_entropy, type_dice=dice)
            losses["loss"] = losses["loss"] + self.type_weight * (cross_entropy + dice)
        if "hv" in targets:
            from nucleiseg.models.hover_loss import hover_loss_terms

            mse, msge = hover_loss_terms(logits[:, 1:3], targets["hv"], target)
            losses.update(hv_mse=mse, hv_msge=msge)
            losses["loss"] = losses["loss"] + self.hv_weights[0] * mse + self.hv_weights[1] * msge
        elif "star_probability" in targets:
            from nucleiseg.models.star_loss import star_loss_terms

            prob, dist = star_loss_terms(
                logits[:, 1:2],
                logits[:, 2:],
                targets["star_probability"],
                targets["star_distances"],
                background_reg=self.star_background_reg,
            )
            losses.update(star_prob=prob, star_dist=dist)
            losses["loss"] = losses["loss"] + self.star_weights[0] * prob + self.star_weights[1] * dist
        elif logits.shape[1] > 1:
            if distance is None:
                raise ValueError("a distance head needs the distance target of each batch")
            regression = F.mse_loss(torch.sigmoid(logits[:, 1:2].float()), distance.float())
            losses["distance_loss"] = regression
            losses["loss"] = losses["loss"] + self.distance_weight * regression
        return losses
