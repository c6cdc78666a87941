import math

import pytest
import torch

from nucleiseg.metrics.pixel import pixel_metrics


def test_metrics_against_hand_counts():
    prob = torch.tensor([0.9, 0.8, 0.2, 0.6, 0.1, 0.4, 0.7, 0.3])
    target = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0])
    # thresholded at 0.5: predictions 1,1,0,1,0,0,1,0 -> tp=3 fp=1 fn=1 tn=3
    metrics = pixel_metrics(0.5)
    result = {k: v.item() for k, v in metrics(prob, target).items()}
    assert math.isclose(result["jaccard"], 3 / 5, rel_tol=1e-6)
    assert math.isclose(result["f1"], 6 / 8, rel_tol=1e-6)
    assert math.isclose(result["recall"], 3 / 4, rel_tol=1e-6)
    assert math.isclose(result["precision"], 3 / 4, rel_tol=1e-6)
    assert math.isclose(result["accuracy"], 6 / 8, rel_tol=1e-6)


def test_metrics_accumulate_over_the_whole_split():
    metrics = pixel_metrics(0.5)
    metrics.update(torch.tensor([1.0, 0.0]), torch.tensor([1, 1]))  # tp 1, fn 1
    metrics.update(torch.tensor([1.0, 1.0]), torch.tensor([1, 0]))  # tp 1, fp 1
    assert metrics.compute()["jaccard"].item() == pytest.approx(2 / 4)


def test_empty_masks():
    metrics = pixel_metrics(0.5)
    both_empty = {k: v.item() for k, v in metrics(torch.zeros(9), torch.zeros(9, dtype=torch.int)).items()}
    assert both_empty["jaccard"] == 1.0 and both_empty["f1"] == 1.0 and both_empty["accuracy"] == 1.0
    metrics.reset()
    missed = {k: v.item() for k, v in metrics(torch.zeros(4), torch.tensor([1, 0, 0, 0])).items()}
    assert missed["jaccard"] == 0.0 and missed["recall"] == 0.0 and missed["accuracy"] == 0.75


def test_per_image_overlap_mean_and_spread():
    from nucleiseg.metrics.pixel import PerImageOverlap

    metric = PerImageOverlap(0.5)
    preds = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    metric.update(preds, target)
    # per image: jaccard 1, 1/2, 1 (empty = agreement); f1 1, 2/3, 1
    values = metric.per_image()
    assert values["jaccard"].tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert values["f1"].tolist() == pytest.approx([1.0, 2 / 3, 1.0])
    result = metric.compute()
    assert result["jaccard_image_mean"].item() == pytest.approx(2.5 / 3)
    assert result["jaccard_image_std"].item() == pytest.approx(float(torch.tensor([1.0, 0.5, 1.0]).std(unbiased=False)))


def test_per_image_overlap_with_single_image_batches_matches_torchmetrics():
    from torchmetrics.functional.classification import binary_jaccard_index

    from nucleiseg.metrics.pixel import PerImageOverlap

    torch.manual_seed(0)
    preds, target = torch.rand(3, 8, 8), (torch.rand(3, 8, 8) > 0.6).int()
    metric = PerImageOverlap(0.5)
    for k in range(3):
        metric.update(preds[k : k + 1], target[k : k + 1])
    expected = [binary_jaccard_index(preds[k], target[k]).item() for k in range(3)]
    assert metric.per_image()["jaccard"].tolist() == pytest.approx(expected)


def test_one_rule_binarises_the_split_each_image_and_the_mask():
    """Pixels exactly at the threshold (bf16 gives many 0.5s): the whole-split metrics, the per-image ones and
    the mask all count them as nucleus (torchmetrics' own threshold is strict and would not)."""
    import numpy as np

    from nucleiseg.metrics.pixel import PerImageOverlap
    from nucleiseg.metrics.scoring import Scorer
    from nucleiseg.postprocess.instances import binarise

    probability = np.array([[0.5, 0.5, 0.2], [0.9, 0.5, 0.1]], np.float32)
    truth = np.array([[1, 1, 0], [1, 0, 0]], np.int32)
    scorer = Scorer(0.5, 0.5, ["components"])
    scorer.update(truth, probability, {"components": np.zeros_like(truth)})
    results = scorer.compute("test")
    mask = binarise(probability, 0.5)
    tp, fp, fn = (mask & (truth > 0)).sum(), (mask & (truth == 0)).sum(), (~mask & (truth > 0)).sum()
    assert results["test/jaccard"] == pytest.approx(tp / (tp + fp + fn)) == pytest.approx(3 / 4)
    assert results["test/jaccard_image_mean"] == pytest.approx(results["test/jaccard"])
    per_image = PerImageOverlap(0.5)
    per_image.update(torch.from_numpy(probability)[None], torch.from_numpy(truth)[None])
    assert per_image.per_image()["jaccard"].item() == pytest.approx(3 / 4)
