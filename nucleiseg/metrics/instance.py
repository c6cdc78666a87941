"""Instance-level metrics: Aggregated Jaccard Index, Panoptic Quality and object detection P/R/F1.

Our own code: torchmetrics' PanopticQuality covers PQ only (and is checked against this in the tests), and
no maintained package provides AJI. Everything is computed from one overlap table between ground-truth and
predicted instances, so all metrics agree on what overlaps what.

- AJI (Kumar et al., IEEE TMI 2017): each true nucleus is paired with the prediction of highest IoU;
  AJI = sum |G and S| / (sum |G or S| + area of predictions never paired).
- Matching for PQ and F1: one-to-one (Hungarian on IoU) among pairs with IoU >= ``iou_threshold`` (0.5):
  TP pairs, FP unmatched predictions, FN unmatched truths. DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of TP,
  PQ = DQ x SQ; precision, recall and F1 from TP/FP/FN.
- An image with no nucleus in truth and none predicted scores 1 on AJI, PQ and F1 (nothing to find, nothing
  invented).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class InstanceCounts:
    """Counts of one image (or summed over images)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    sum_iou: float = 0.0
    aji_intersection: float = 0.0
    aji_union: float = 0.0

    def __add__(self, other: InstanceCounts) -> InstanceCounts:
        return InstanceCounts(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.sum_iou + other.sum_iou,
            self.aji_intersection + other.aji_intersection,
            self.aji_union + other.aji_union,
        )

    @property
    def empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0

    def scores(self) -> dict[str, float]:
        if self.empty:
            return {
                "aji": 1.0,
                "dq": 1.0,
                "sq": 1.0,
                "pq": 1.0,
                "object_precision": 1.0,
                "object_recall": 1.0,
                "object_f1": 1.0,
            }
        dq = self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn)
        sq = self.sum_iou / self.tp if self.tp else 0.0
        return {
            "aji": self.aji_intersection / self.aji_union if self.aji_union else 0.0,
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
    if iou.size:
        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] >= iou_threshold
        counts.tp = int(keep.sum())
        counts.sum_iou = float(iou[rows, cols][keep].sum())
    counts.fp = len(pred_area) - counts.tp
    counts.fn = len(truth_area) - counts.tp
    # AJI
    used = np.zeros(len(pred_area), dtype=bool)
    for g in range(len(truth_area)):
        if len(pred_area) and intersection[g].any():
            best = int(np.argmax(iou[g]))
            counts.aji_intersection += intersection[g, best]
            counts.aji_union += union[g, best]
            used[best] = True
        else:
            counts.aji_union += truth_area[g]
    counts.aji_union += float(pred_area[~used].sum())
    return counts


@dataclass
class InstanceMetrics:
    """Accumulates images; AJI and PQ are averaged over images (as in MoNuSeg and HoVer-Net), object
    precision/recall/F1 come from TP/FP/FN summed over the split."""

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
            "aji": float(np.mean([s["aji"] for s in per_image])),
            "pq": float(np.mean([s["pq"] for s in per_image])),
            "dq": float(np.mean([s["dq"] for s in per_image])),
            "sq": float(np.mean([s["sq"] for s in per_image])),
            "object_precision": total["object_precision"],
            "object_recall": total["object_recall"],
            "object_f1": total["object_f1"],
            "n_true_nuclei": float(sum(c.tp + c.fn for c in self.per_image)),
            "n_predicted_nuclei": float(sum(c.tp + c.fp for c in self.per_image)),
        }
