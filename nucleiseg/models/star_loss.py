"""StarDist's loss (Schmidt et al., MICCAI 2018) in PyTorch: binary cross-entropy on the object probability plus
the probability-weighted mean absolute error of the ray distances.

What we matched, in ``stardist/models/base.py`` (``prepare_for_training``, ``generic_masked_loss``,
``masked_loss_mae``) and ``model2d.py`` (``Config2D``, the data generator), for a 2-D model without classes:

- ``prob_loss``: the mean binary cross-entropy between the target (``edt_prob``, in [0, 1]) and the sigmoid
  output. Ours takes logits (``binary_cross_entropy_with_logits``, the same value without Keras's clipping of
  the probability at 1e-7). With soft targets its minimum is the targets' own entropy, not 0: StarDist's ``kld``
  metric subtracts that; the loss does not.
- ``dist_loss`` with ``train_dist_loss='mae'``: the mask is the probability target itself (``dist_mask = prob``
  without shape completion), so centre pixels count most and the background not at all::

      mean_pixels(mean_rays(prob * |d_true - d_pred|)) / (mean_pixels(prob) + 1e-7)
        + background_reg * mean_pixels(mean_rays((1 - prob) * |d_pred|))

  the means running over the batch too (Keras averages the per-pixel losses; ``K.mean(mask)`` is the batch's).
  ``train_background_reg`` is 1e-4 in StarDist. Its weight ``1 - prob`` is positive inside nuclei too (prob < 1
  away from the centre), so even a perfect prediction pays ``background_reg * mean((1 - prob) * d_true)``; that is
  StarDist's own code, kept. ``train_foreground_only`` (0.9) is no part of the loss: it is the
  fraction of training patches sampled to contain a nucleus, a data-loading setting.
- StarDist weighs the two terms ``train_loss_weights = (1, 0.2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Keras's K.epsilon(), StarDist's guard for a batch without nuclei: not a setting
_MASK_EPSILON = 1.0e-7


def star_loss_terms(
    pred_prob_logits: torch.Tensor,
    pred_dist: torch.Tensor,
    true_prob: torch.Tensor,
    true_dist: torch.Tensor,
    *,
    background_reg: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prob_loss, dist_loss)``: ``pred_prob_logits`` and ``true_prob`` (in [0, 1]) are ``float Bx1xHxW``,
    ``pred_dist`` and ``true_dist`` ``float B x n_rays x H x W`` in pixels; ``background_reg`` (StarDist 1e-4) weighs
    the pull of background distance predictions towards 0."""
    if pred_prob_logits.shape != true_prob.shape or pred_prob_logits.ndim != 4 or pred_prob_logits.shape[1] != 1:
        raise ValueError(
            f"object probability: expected Bx1xHxW predictions and targets, got {tuple(pred_prob_logits.shape)} "
            f"and {tuple(true_prob.shape)}"
        )
    expected = (pred_prob_logits.shape[0], pred_dist.shape[1], *pred_prob_logits.shape[2:])
    if pred_dist.shape != true_dist.shape or tuple(pred_dist.shape) != expected:
        raise ValueError(
            f"distances: expected B x n_rays x H x W matching {tuple(pred_prob_logits.shape)}, got "
            f"{tuple(pred_dist.shape)} and {tuple(true_dist.shape)}"
        )
    if background_reg < 0:
        raise ValueError(f"background_reg={background_reg}: expected a weight >= 0")
    true_prob = true_prob.float()
    prob_loss = F.binary_cross_entropy_with_logits(pred_prob_logits.float(), true_prob)
    pred_dist, true_dist = pred_dist.float(), true_dist.float()
    weighted_error = (true_prob * (true_dist - pred_dist).abs()).mean(dim=1)
    dist_loss = weighted_error.mean() / (true_prob.mean() + _MASK_EPSILON)
    if background_reg > 0:
        dist_loss = dist_loss + background_reg * ((1 - true_prob) * pred_dist.abs()).mean()
    return prob_loss, dist_loss
