"""Instance-level metrics as the field defines them: AJI, AJI+, Panoptic Quality (DQ x SQ) and object P/R/F1.

Our own code: torchmetrics' PanopticQuality covers PQ only (the tests check ours against it), and no maintained
package provides AJI or AJI+. The definitions follow HoVer-Net (Graham et al., Medical Image Analysis 2019;
``vqdang/hover_net: metrics/stats_utils.py``), all computed from one overlap table between ground-truth and
predicted instances:

- AJI (Kumar et al., IEEE TMI 2017): each true nucleus is paired with the prediction of highest IoU (a prediction
  may be paired with several true nuclei and then counts in the union each time); AJI = sum |G and S| /
  (sum |G or S| + area of true nuclei with no overlap + area of predictions never paired).
- AJI+ (HoVer-Net): the same with a one-to-one pairing that maximises the summed IoU (Hungarian), so a prediction
  spanning two nuclei is not rewarded twice.
- PQ: true and predicted nuclei match when IoU > ``iou_threshold`` (strictly; at 0.5 the match is unique);
  below 0.5 a Hungarian assignment keeps it one-to-one. DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of the
  matches, PQ = DQ x SQ; object precision, recall and F1 from TP/FP/FN. (HoVer-Net adds 1e-6 to SQ's
  denominator; the exact value is kept here.)
- Over a split, AJI, AJI+, PQ, DQ and SQ are the mean of the per-image values (HoVer-Net's ``compute_stats``,
  the MoNuSeg challenge); object P/R/F1 pool TP/FP/FN over the split.
- Empty images: no true nucleus and none predicted scores 1 on everything (nothing to find, nothing invented);
  nuclei on one side only score 0 (HoVer-Net's code raises or returns NaN there).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
from scipy.optimize import linear_sum_assignment

PER_IMAGE = ("aji", "aji_plus", "dq", "sq", "pq")


@dataclass
class InstanceCounts:
    """Counts of one image (or summed over images)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    sum_iou: float = 0.0
    aji_intersection: float = 0.0
    aji_union: float = 0.0
    aji_plus_intersection: float = 0.0
    aji_plus_union: float = 0.0

    def __add__(self, other: InstanceCounts) -> InstanceCounts:
        return InstanceCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0

    def scores(self) -> dict[str, float]:
        if self.empty:
            names = (*PER_IMAGE, "object_precision", "object_recall", "object_f1")
            return dict.fromkeys(names, 1.0)
        dq = self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn)
        sq = self.sum_iou / self.tp if self.tp else 0.0
        return {
            "aji": self.aji_intersection / self.aji_union if self.aji_union else 0.0,
            "aji_plus": self.aji_plus_intersection / self.aji_plus_union if self.aji_plus_union else 0.0,
            "dq": dq,
            "sq": sq,
            "pq": dq * sq,
            "object_precision": self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0,
            "object_recall": self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0,
            "object_f1": 2 * self.tp / (2 * self.tp + self.fp + self.fn),
        }


def overlap_table(truth: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(intersections GxP, truth areas G, prediction areas P)`` for instance labels 1..G and 1..P."""
    truth, prediction = truth.astype(np.int64).ravel(), prediction.astype(np.int64).ravel()
    n_truth, n_pred = int(truth.max(initial=0)), int(prediction.max(initial=0))
    joint = np.bincount(truth * (n_pred + 1) + prediction, minlength=(n_truth + 1) * (n_pred + 1))
    joint = joint.reshape(n_truth + 1, n_pred + 1)
    return joint[1:, 1:], joint[1:, :].sum(axis=1), joint[:, 1:].sum(axis=0)


def _aji_sums(
    pairs: tuple[np.ndarray, np.ndarray],
    intersection: np.ndarray,
    union: np.ndarray,
    truth_area: np.ndarray,
    pred_area: np.ndarray,
) -> tuple[float, float]:
    """Intersection and union sums of AJI given ``(true indices, pred indices)`` of the kept pairs."""
    rows, cols = pairs
    inter = float(intersection[rows, cols].sum())
    total = float(union[rows, cols].sum())
    total += float(np.delete(truth_area, np.unique(rows)).sum()) + float(np.delete(pred_area, np.unique(cols)).sum())
    return inter, total


def instance_counts(truth: np.ndarray, prediction: np.ndarray, iou_threshold: float = 0.5) -> InstanceCounts:
    """Counts for one image: ``truth`` and ``prediction`` are ``int HxW`` instance labels (0 = background)."""
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in shape")
    from skimage.segmentation import relabel_sequential

    truth, prediction = relabel_sequential(truth)[0], relabel_sequential(prediction)[0]
    intersection, truth_area, pred_area = overlap_table(truth, prediction)
    union = truth_area[:, None] + pred_area[None, :] - intersection
    iou = np.divide(intersection, union, out=np.zeros(intersection.shape), where=union > 0)
    counts = InstanceCounts()
    # PQ matching: IoU > threshold; one-to-one by construction at >= 0.5, by Hungarian assignment below it
    if iou.size and iou_threshold >= 0.5:
        rows, cols = np.nonzero(iou > iou_threshold)
    elif iou.size:
        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] > iou_threshold
        rows, cols = rows[keep], cols[keep]
    else:
        rows = cols = np.zeros(0, dtype=np.int64)
    counts.tp, counts.sum_iou = len(rows), float(iou[rows, cols].sum())
    counts.fp, counts.fn = len(pred_area) - counts.tp, len(truth_area) - counts.tp
    # AJI: every true nucleus with any overlap takes its best prediction, re-use allowed
    if iou.size:
        best = np.argmax(iou, axis=1)
        overlapping = np.nonzero(iou[np.arange(len(truth_area)), best] > 0)[0]
        aji_pairs = (overlapping, best[overlapping])
        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] > 0
        plus_pairs = (rows[keep], cols[keep])
    else:
        aji_pairs = plus_pairs = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    # a prediction paired with several true nuclei counts once per pairing in the union, once among the unpaired
    counts.aji_intersection, counts.aji_union = _aji_sums(aji_pairs, intersection, union, truth_area, pred_area)
    counts.aji_plus_intersection, counts.aji_plus_union = _aji_sums(
        plus_pairs, intersection, union, truth_area, pred_area
    )
    return counts


@dataclass
class InstanceMetrics:
    """Accumulates images; AJI, AJI+, PQ, DQ and SQ are averaged over images (as in HoVer-Net and MoNuSeg),
    object precision/recall/F1 come from TP/FP/FN summed over the split."""

    iou_threshold: float = 0.5
    per_image: list[InstanceCounts] = field(default_factory=list)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> InstanceCounts:
        counts = instance_counts(truth, prediction, self.iou_threshold)
        self.per_image.append(counts)
        return counts

    def compute(self) -> dict[str, float]:
        if not self.per_image:
            raise ValueError("no image was scored")
        per_image = [c.scores() for c in self.per_image]
        total = sum(self.per_image, InstanceCounts()).scores()
        return {
            **{name: float(np.mean([s[name] for s in per_image])) for name in PER_IMAGE},
            "object_precision": total["object_precision"],
            "object_recall": total["object_recall"],
            "object_f1": total["object_f1"],
            "n_true_nuclei": float(sum(c.tp + c.fn for c in self.per_image)),
            "n_predicted_nuclei": float(sum(c.tp + c.fp for c in self.per_image)),
        }
