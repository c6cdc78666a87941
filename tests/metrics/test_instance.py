import numpy as np
import pytest
import torch

from nucleiseg.metrics.instance import InstanceMetrics, instance_counts


def disc(shape, centre, radius, value=1):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, np.int32)
    mask[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2] = value
    return mask


def test_perfect_prediction():
    truth = disc((40, 40), (10, 10), 5) + disc((40, 40), (28, 28), 6, 2)
    scores = instance_counts(truth, truth).scores()
    assert scores == {**scores, "aji": 1.0, "pq": 1.0, "object_f1": 1.0}


def test_one_nucleus_split_in_two():
    truth = np.zeros((10, 20), np.int32)
    truth[2:8, 2:18] = 1  # 6 x 16 = 96 px
    pred = np.zeros_like(truth)
    pred[2:8, 2:12], pred[2:8, 12:18] = 1, 2  # 60 px and 36 px
    counts = instance_counts(truth, pred)
    # matching: IoU 60/96 = 0.625 >= 0.5 -> 1 TP; the 36-px half is a FP
    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 0)
    scores = counts.scores()
    assert scores["sq"] == pytest.approx(60 / 96)
    assert scores["dq"] == pytest.approx(1 / 1.5) and scores["pq"] == pytest.approx(60 / 96 / 1.5)
    # AJI: best pair 60/96; the unused 36-px prediction joins the union: 60 / (96 + 36)
    assert scores["aji"] == pytest.approx(60 / 132)
    assert scores["object_f1"] == pytest.approx(2 / 3)


def test_two_nuclei_merged_into_one_with_tied_ious():
    truth = np.zeros((10, 20), np.int32)
    truth[2:8, 2:10], truth[2:8, 10:18] = 1, 2  # 48 px each
    pred = (truth > 0).astype(np.int32)  # one 96-px blob
    counts = instance_counts(truth, pred)
    # both IoUs are exactly 48/96 = 0.5: HoVer-Net matches only IoU > 0.5, so no TP, 1 FP, 2 FN
    assert (counts.tp, counts.fp, counts.fn) == (0, 1, 2)
    # AJI: both truths pair with the blob, which counts in the union twice: (48 + 48) / (96 + 96)
    assert counts.scores()["aji"] == pytest.approx((48 + 48) / (96 + 96))
    # AJI+: one-to-one, so nucleus 2 is unpaired: 48 / (96 + 48)
    assert counts.scores()["aji_plus"] == pytest.approx(48 / 144)


def test_over_segmentation_with_a_leak_separates_aji_from_aji_plus():
    """HoVer-Net's get_fast_aji vs get_fast_aji_plus on one row of pixels, computed by hand:

    truth: 0 1 1 1 1 1 1 1 1 1 1 2 2 2 2 0   (g1 = 10 px, g2 = 4 px)
    pred : 0 2 2 2 1 1 1 1 1 1 1 1 1 1 3 0   (p1 = 10 px: 7 in g1, 3 in g2; p2 = 3 px in g1; p3 = 1 px in g2)
    IoU: g1-p1 7/13, g1-p2 3/10, g2-p1 3/11, g2-p3 1/4.
    AJI: both truths take p1 -> (7 + 3) / (13 + 11 + p2 3 + p3 1) = 10/28.
    AJI+: Hungarian on IoU picks g1-p1, g2-p3 -> (7 + 1) / (13 + 4 + p2 3) = 8/20.
    PQ: only g1-p1 exceeds 0.5 -> TP 1, FP 2, FN 1; DQ 0.4, SQ 7/13.
    """
    truth = np.array([[0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0]], np.int32)
    pred = np.array([[0, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 0]], np.int32)
    scores = instance_counts(truth, pred).scores()
    assert scores["aji"] == pytest.approx(10 / 28)
    assert scores["aji_plus"] == pytest.approx(8 / 20)
    assert scores["dq"] == pytest.approx(0.4) and scores["sq"] == pytest.approx(7 / 13)
    assert scores["pq"] == pytest.approx(0.4 * 7 / 13)


def test_a_clean_split_scores_aji_and_aji_plus_alike():
    truth = np.array([[0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]], np.int32)  # 10 px
    pred = np.array([[0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0]], np.int32)  # 6 + 4 px
    scores = instance_counts(truth, pred).scores()
    assert scores["aji"] == scores["aji_plus"] == pytest.approx(6 / 14)


def test_an_iou_of_exactly_the_threshold_does_not_match():
    truth = np.zeros((1, 8), np.int32)
    truth[0, :4] = 1
    pred = np.zeros((1, 8), np.int32)
    pred[0, 2:6] = 1  # IoU 2/6
    assert instance_counts(truth, pred, iou_threshold=1 / 3).tp == 0
    assert instance_counts(truth, pred, iou_threshold=0.3).tp == 1  # below 0.5: Hungarian, then IoU > 0.3


def test_two_nuclei_merged_into_one_exact_counts():
    truth = np.zeros((10, 30), np.int32)
    truth[2:8, 2:10], truth[2:8, 10:28] = 1, 2  # 48 px and 108 px
    pred = (truth > 0).astype(np.int32)  # 156 px
    counts = instance_counts(truth, pred)
    # IoU(2, blob) = 108/156 = 0.69 -> TP; nucleus 1 (IoU 0.31) is missed
    assert (counts.tp, counts.fp, counts.fn) == (1, 0, 1)
    # AJI: both truths pick the blob: (48 + 108) / (156 + 156) = 0.5
    assert counts.scores()["aji"] == pytest.approx(0.5)


def test_a_missed_nucleus():
    truth = disc((40, 40), (10, 10), 5) + disc((40, 40), (28, 28), 6, 2)
    pred = disc((40, 40), (10, 10), 5)
    counts = instance_counts(truth, pred)
    assert (counts.tp, counts.fp, counts.fn) == (1, 0, 1)
    area2 = int((truth == 2).sum())
    assert counts.scores()["aji"] == pytest.approx(int((truth == 1).sum()) / (int((truth == 1).sum()) + area2))
    assert counts.scores()["object_recall"] == 0.5 and counts.scores()["object_precision"] == 1.0


def test_empty_images():
    empty = np.zeros((8, 8), np.int32)
    assert instance_counts(empty, empty).scores()["aji"] == 1.0
    assert instance_counts(empty, empty).scores()["pq"] == 1.0
    invented = instance_counts(empty, disc((8, 8), (4, 4), 2))
    assert invented.scores()["aji"] == 0.0 and invented.scores()["pq"] == 0.0 and invented.fp == 1
    missed = instance_counts(disc((8, 8), (4, 4), 2), empty)
    assert missed.fn == 1 and all(missed.scores()[k] == 0.0 for k in ("aji", "aji_plus", "pq", "dq", "object_f1"))


def test_shifted_discs_match_only_above_the_iou_threshold():
    truth = disc((60, 60), (30, 30), 10)
    near = disc((60, 60), (30, 33), 10)  # IoU ~0.8
    far = disc((60, 60), (30, 45), 10)  # IoU well under 0.5
    assert instance_counts(truth, near).tp == 1 and instance_counts(truth, far).tp == 0


def test_pq_agrees_with_torchmetrics():
    from torchmetrics.detection import PanopticQuality

    rng = np.random.default_rng(0)
    truth = np.zeros((64, 64), np.int32)
    pred = np.zeros((64, 64), np.int32)
    for k in range(1, 7):
        cy, cx = rng.integers(8, 56, 2)
        truth = np.where(disc((64, 64), (cy, cx), 5) > 0, k, truth)
        pred = np.where(disc((64, 64), (cy + rng.integers(-3, 4), cx + rng.integers(-3, 4)), 5) > 0, k, pred)
    ours = instance_counts(truth, pred).scores()["pq"]

    def panoptic(labels):  # (category, instance) pairs: nucleus = 1, background = 0 ("stuff")
        category = (labels > 0).astype(np.int64)
        return torch.from_numpy(np.stack([category, labels.astype(np.int64)], axis=-1))[None]

    reference = PanopticQuality(things={1}, stuffs={0})
    reference.update(panoptic(pred), panoptic(truth))
    # torchmetrics averages over categories: things (nuclei) and stuff (background); take the nucleus class
    per_class = PanopticQuality(things={1}, stuffs={0}, return_per_class=True)
    per_class.update(panoptic(pred), panoptic(truth))
    assert ours == pytest.approx(per_class.compute()[0, 0].item(), abs=1e-6)


def test_metrics_over_a_split():
    metrics = InstanceMetrics()
    truth = disc((40, 40), (10, 10), 5) + disc((40, 40), (28, 28), 6, 2)
    metrics.update(truth, truth)
    metrics.update(truth, disc((40, 40), (10, 10), 5))
    result = metrics.compute()
    assert result["object_recall"] == pytest.approx(3 / 4) and result["object_precision"] == 1.0
    assert result["n_true_nuclei"] == 4 and result["n_predicted_nuclei"] == 3
    assert result["pq"] == pytest.approx((1.0 + instance_counts(truth, disc((40, 40), (10, 10), 5)).scores()["pq"]) / 2)
