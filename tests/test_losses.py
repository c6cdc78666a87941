import math

import segmentation_models_pytorch as smp
import torch

from nucleiseg.models.losses import BCEDiceLoss


def test_loss_matches_the_papers_equations_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    p = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1)), 1 / (1 + math.exp(-3))]
    y = [0, 1, 1, 1]
    bce = -sum(yi * math.log(pi) + (1 - yi) * math.log(1 - pi) for pi, yi in zip(p, y, strict=True)) / 4
    dice = (2 * sum(pi * yi for pi, yi in zip(p, y, strict=True)) + 1) / (sum(p) + sum(y) + 1)
    out = BCEDiceLoss(smooth=1.0)(logits, target)
    assert math.isclose(out["bce"].item(), bce, rel_tol=1e-6)
    assert math.isclose(out["dice_loss"].item(), 1 - dice, rel_tol=1e-6)
    assert math.isclose(out["loss"].item(), bce + 1 - dice, rel_tol=1e-6)


def test_dice_term_equals_smp_with_half_the_smoothing():
    # smp >= 0.5 computes Dice in Tversky form, (2I + 2s) / (sum p + sum y + 2s): its smooth s is the
    # paper's 2s, which is why losses.py writes equation 2 out
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 16, 16)
    target = (torch.rand(3, 1, 16, 16) > 0.7).float()
    ours = BCEDiceLoss(smooth=1.0)(logits, target)["dice_loss"]
    same = smp.losses.DiceLoss("binary", from_logits=True, smooth=0.5)(logits, target)
    assert torch.allclose(ours, same, atol=1e-6)


def test_empty_target_still_penalises_false_positives():
    logits = torch.full((1, 1, 4, 4), 3.0)  # confident nucleus everywhere, none in truth
    out = BCEDiceLoss(smooth=1.0)(logits, torch.zeros(1, 1, 4, 4))
    p = 1 / (1 + math.exp(-3))
    assert math.isclose(out["dice_loss"].item(), 1 - 1 / (16 * p + 1), rel_tol=1e-6)
