"""Metrics of typed nuclei (each nucleus has a class 1..K: tumour, lymphocyte, ...) as three reference codes define
them. Each definition transcribes its dataset's evaluation code; the tests check ours against those functions.

- **CoNIC mPQ+** (``TissueImageAnalytics/CoNIC``, ``compute_stats.py`` with ``metrics/stats_utils.py``:
  ``get_multi_pq_info``, ``get_pq``): per image and class, true and predicted nuclei of that class match when
  IoU > 0.5; TP, FP, FN and the sum of matched IoUs are summed per class over the whole dataset, then
  DQ = TP / (TP + FP/2 + FN/2), SQ = sum IoU / TP, PQ = DQ x SQ per class, and mPQ+ is the mean over all K classes.
  A class with no nucleus anywhere scores 0 and still counts in the mean (their code does the same). The multi-class
  R² (``get_multi_r2``) is scikit-learn's ``r2_score`` of the per-image counts of each class, averaged over classes:
  1 when the counts are predicted exactly, 0 when the true counts are constant and the prediction is not, NaN with
  fewer than 2 images. (The challenge counts nuclei in the central 224x224 of each patch; that crop is the caller's.)
- **PanNuke mPQ and bPQ** (``TissueImageAnalytics/PanNuke-metrics``, ``run.py: main`` with ``utils.py:
  get_fast_pq``): PQ per image and class with the same matching, NaN (skipped) when the image has no TRUE nucleus of
  that class, even if some are predicted, so those false positives are never charged. A class's PQ is the mean over
  images of its non-NaN values; mPQ is the mean over images of each image's mean over its non-NaN classes (then, with
  tissues given, the mean per tissue and the mean over tissues, as their headline); it is not the mean of the
  per-class PQs. bPQ is the binary PQ of each image (NaN when the image has no true nucleus), averaged the same way.
- **HoVer-Net F_d, F_c and type accuracy** (``vqdang/hover_net``, ``compute_stats.py: run_nuclei_type_stat`` with
  ``metrics/stats_utils.py: pair_coordinates``): nuclei are points (centres of mass); per image the Hungarian
  assignment minimises the summed distances of all true-predicted pairs, then pairs farther than ``radius`` are
  dropped (their code uses 12 px at 40x). The paired and unpaired nuclei of all images are concatenated.
  F_d = 2 TP / (2 TP + FP + FN) of detection; accuracy = share of pairs with the same class; per class c,
  F_c = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d,c + FN_d,c), where TP_c, FP_c, FN_c count pairs by class and
  FP_d,c, FN_d,c the unpaired predicted and true nuclei of class c. (Their formula adds TN_c, but they count it
  among the pairs where either side is c, so it is always 0; their weights are w = [2, 2, 1, 1].)

Where the references disagree: CoNIC pools counts over the dataset before dividing (a rare class is weighted by its
nuclei), PanNuke averages per image (every image with that class weighs the same, predictions of a class absent from
an image's truth are free); HoVer-Net matches centroids within a radius, the other two masks at IoU > 0.5. For binary
PQ, CoNIC's per-image ``pq`` scores an empty image 0, PanNuke skips it, ``instance.py`` scores it 1.

Not reproduced, on purpose: the references' ``+ 1e-6`` in the DQ and SQ denominators (we divide exactly and give 0
where the denominator is 0, their value there; ours differ from theirs by at most 2e-6 relative); HoVer-Net's
stand-in nucleus at (0, 0) of type 0 for an image without nuclei (it counts as one more TP, FP or FN there); its
``exhaustive=False`` mode (type -1); the 1e-7-level effect of its float32 centroids. Undefined scores (nothing to
count) are NaN; PanNuke's means skip NaNs as ``np.nanmean`` does, without its warning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from nucleiseg.metrics.instance import overlap_table

MATCH_IOU = 0.5  # get_pq (CoNIC) and get_fast_pq (PanNuke) default: a match needs IoU > 0.5, hence one-to-one
F_C_WEIGHTS = (2, 2, 1, 1)  # HoVer-Net run_nuclei_type_stat: w for (paired FP_c, paired FN_c, unpaired FP, FN)

NucleusTypes = Mapping[int, int] | np.ndarray
"""The class of each nucleus: ``{label: class}`` or a class map ``int HxW`` constant over each nucleus."""


def class_key(name: str) -> str:
    """The class name as it appears in metric keys: lower case, spaces as underscores."""
    return name.strip().lower().replace(" ", "_")


def nucleus_classes(
    labels: np.ndarray, types: NucleusTypes, n_classes: int, what: str = "truth"
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels 1..N int64 HxW, classes int64 N)`` from instance labels ``int HxW`` (0 = background) and ``types``.

    Labels keep their order (label i+1 is the (i+1)-th smallest input label); every class must lie in 1..n_classes.
    """
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} labels: expected an integer HxW array, got {labels.dtype} {labels.shape}")
    if labels.min(initial=0) < 0:
        raise ValueError(f"{what} labels: found negative labels, expected 0 (background) and positive nuclei")
    ids, sequential = np.unique(labels, return_inverse=True)
    sequential = sequential.reshape(labels.shape).astype(np.int64) + (0 if ids[:1].tolist() == [0] else 1)
    ids = ids[ids != 0]
    if isinstance(types, np.ndarray):
        classes = _classes_from_map(sequential, types, ids, what)
    else:
        missing = [int(i) for i in ids if int(i) not in types]
        if missing:
            raise ValueError(f"{what} types: no class for nuclei {missing[:10]} (of {len(missing)} missing)")
        classes = np.array([types[int(i)] for i in ids], dtype=np.int64)
    wrong = (classes < 1) | (classes > n_classes)
    if wrong.any():
        label, value = int(ids[np.argmax(wrong)]), int(classes[np.argmax(wrong)])
        raise ValueError(f"{what} types: nucleus {label} has class {value}, expected 1..{n_classes}")
    return sequential, classes


def _classes_from_map(sequential: np.ndarray, class_map: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """Class of each nucleus 1..N of ``sequential`` read from ``class_map``; ``ids`` are the original labels."""
    if class_map.shape != sequential.shape or not np.issubdtype(class_map.dtype, np.integer):
        raise ValueError(
            f"{what} class map: {class_map.dtype} {class_map.shape}, expected integers shaped as the labels"
            f" {sequential.shape}"
        )
    inside = sequential > 0
    pairs = np.unique(np.stack([sequential[inside], class_map[inside].astype(np.int64)]), axis=1)
    if pairs.shape[1] != len(ids):  # one (label, class) pair per nucleus, else a nucleus holds two classes
        label = int(ids[pairs[0][np.nonzero(np.diff(pairs[0]) == 0)[0][0]] - 1])
        raise ValueError(f"{what} class map: nucleus {label} holds several classes, expected one per nucleus")
    classes = np.zeros(len(ids), dtype=np.int64)
    classes[pairs[0] - 1] = pairs[1]
    return classes


def centroids(labels: np.ndarray, n_nuclei: int) -> np.ndarray:
    """Centres of mass ``(row, column)``, float64 ``N x 2``, of labels 1..N in ``labels`` (``int HxW``)."""
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n_nuclei + 1)[1:]
    rows, cols = np.indices(labels.shape)
    sums = [np.bincount(flat, weights=axis.ravel(), minlength=n_nuclei + 1)[1:] for axis in (rows, cols)]
    return np.stack(sums, axis=1) / np.maximum(area, 1)[:, None]


def pair_centroids(truth: np.ndarray, prediction: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(true, predicted)`` of the pairs HoVer-Net's ``pair_coordinates`` keeps: Hungarian on Euclidean
    distance between ``N x 2`` and ``M x 2`` points, then pairs at distance <= ``radius`` (pixels)."""
    if not len(truth) or not len(prediction):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    distance = cdist(truth, prediction)
    rows, cols = linear_sum_assignment(distance)
    keep = distance[rows, cols] <= radius
    return rows[keep], cols[keep]


@dataclass
class TypedImageCounts:
    """What one image contributes; arrays of length K are indexed by class - 1."""

    tp: np.ndarray  # K: true and predicted nuclei of the class matched at IoU > 0.5
    sum_iou: np.ndarray  # K: sum of their IoUs
    n_true: np.ndarray  # K: true nuclei of the class
    n_predicted: np.ndarray  # K: predicted nuclei of the class
    binary_tp: int  # nuclei matched at IoU > 0.5 whatever their classes
    binary_sum_iou: float
    paired_true: np.ndarray  # classes of the true nuclei paired by centroid (HoVer-Net)
    paired_predicted: np.ndarray  # classes of their predicted partners, aligned
    unpaired_true: np.ndarray  # classes of the true nuclei left unpaired
    unpaired_predicted: np.ndarray  # classes of the predicted nuclei left unpaired

    @property
    def fp(self) -> np.ndarray:
        return self.n_predicted - self.tp

    @property
    def fn(self) -> np.ndarray:
        return self.n_true - self.tp


def typed_image_counts(
    true_labels: np.ndarray,
    true_types: NucleusTypes,
    predicted_labels: np.ndarray,
    predicted_types: NucleusTypes,
    n_classes: int,
    radius: float,
) -> TypedImageCounts:
    """Counts of one image: instance labels ``int HxW`` (0 = background), their classes and the pairing radius (px)."""
    if true_labels.shape != predicted_labels.shape:
        raise ValueError(f"true labels {true_labels.shape} and predicted {predicted_labels.shape} differ in shape")
    truth, true_classes = nucleus_classes(true_labels, true_types, n_classes, "truth")
    prediction, predicted_classes = nucleus_classes(predicted_labels, predicted_types, n_classes, "prediction")
    intersection, true_area, predicted_area = overlap_table(truth, prediction)
    union = true_area[:, None] + predicted_area[None, :] - intersection
    iou = np.divide(intersection, union, out=np.zeros(intersection.shape), where=union > 0)
    # masks restricted to one class keep their pairwise IoUs, so per-class matches are the same-class global matches
    rows, cols = np.nonzero(iou > MATCH_IOU)
    same = true_classes[rows] == predicted_classes[cols]
    matched_class = true_classes[rows][same] - 1
    paired_true, paired_predicted = pair_centroids(
        centroids(truth, len(true_classes)), centroids(prediction, len(predicted_classes)), radius
    )
    return TypedImageCounts(
        tp=np.bincount(matched_class, minlength=n_classes),
        sum_iou=np.bincount(matched_class, weights=iou[rows, cols][same], minlength=n_classes),
        n_true=np.bincount(true_classes - 1, minlength=n_classes),
        n_predicted=np.bincount(predicted_classes - 1, minlength=n_classes),
        binary_tp=len(rows),
        binary_sum_iou=float(iou[rows, cols].sum()),
        paired_true=true_classes[paired_true],
        paired_predicted=predicted_classes[paired_predicted],
        unpaired_true=np.delete(true_classes, paired_true),
        unpaired_predicted=np.delete(predicted_classes, paired_predicted),
    )


def _divide(numerator: np.ndarray, denominator: np.ndarray, where_zero: float) -> np.ndarray:
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, where_zero)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """``np.nanmean`` without its warning: NaN where every value is NaN."""
    valid = ~np.isnan(values)
    return _divide(np.where(valid, values, 0.0).sum(axis=axis), valid.sum(axis=axis), np.nan)


def _pq(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, sum_iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(DQ, SQ)``, 0 where undefined (the references' value there, given their 1e-6 guards)."""
    return _divide(tp, tp + 0.5 * fp + 0.5 * fn, 0.0), _divide(sum_iou, tp, 0.0)


def conic_pq(per_image: Sequence[TypedImageCounts]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CoNIC's ``(PQ, DQ, SQ)`` per class (K each) from counts summed over all images; mPQ+ is ``PQ.mean()``."""
    tp, fp, fn, sum_iou = (sum(getattr(c, name) for c in per_image) for name in ("tp", "fp", "fn", "sum_iou"))
    dq, sq = _pq(tp, fp, fn, sum_iou)
    return dq * sq, dq, sq


def multi_r2(true_counts: np.ndarray, predicted_counts: np.ndarray) -> np.ndarray:
    """CoNIC's R² per class (K) of counts ``N x K`` (images x classes), as scikit-learn's ``r2_score``."""
    if len(true_counts) < 2:
        return np.full(true_counts.shape[1], np.nan)
    true_counts, predicted_counts = true_counts.astype(np.float64), predicted_counts.astype(np.float64)
    residual = ((true_counts - predicted_counts) ** 2).sum(axis=0)
    total = ((true_counts - true_counts.mean(axis=0)) ** 2).sum(axis=0)
    # r2_score's force_finite: a perfect prediction is 1, an imperfect one of constant counts 0
    return np.where(residual == 0, 1.0, 1.0 - _divide(residual, total, 1.0))


def pannuke_pq(
    per_image: Sequence[TypedImageCounts], tissues: Sequence[str] | None = None
) -> tuple[np.ndarray, float, float]:
    """PanNuke's ``(PQ per class (K), mPQ, bPQ)``: per-image PQ, NaN where the image has no true nucleus of the
    class, averaged over images; with ``tissues`` (one per image), mPQ and bPQ average per tissue, then tissues."""
    n_true = np.stack([c.n_true for c in per_image]).astype(np.float64)
    dq, sq = _pq(*(np.stack([getattr(c, name) for c in per_image]) for name in ("tp", "fp", "fn", "sum_iou")))
    class_pq = np.where(n_true > 0, dq * sq, np.nan)  # images x classes
    binary_tp = np.array([c.binary_tp for c in per_image])
    binary_dq, binary_sq = _pq(
        binary_tp,
        np.array([c.n_predicted.sum() for c in per_image]) - binary_tp,
        n_true.sum(axis=1) - binary_tp,
        np.array([c.binary_sum_iou for c in per_image]),
    )
    image_bpq = np.where(n_true.sum(axis=1) > 0, binary_dq * binary_sq, np.nan)
    image_mpq = _nanmean(class_pq, axis=1)
    if tissues is None:
        return _nanmean(class_pq, axis=0), float(_nanmean(image_mpq)), float(_nanmean(image_bpq))
    if len(tissues) != len(per_image):
        raise ValueError(f"{len(tissues)} tissue names for {len(per_image)} images, expected one per image")
    names = np.asarray(tissues)
    groups = [names == name for name in np.unique(names)]
    mpq = _nanmean(np.array([_nanmean(image_mpq[group]) for group in groups]))
    bpq = _nanmean(np.array([_nanmean(image_bpq[group]) for group in groups]))
    return _nanmean(class_pq, axis=0), float(mpq), float(bpq)


def hover_net_type_stats(per_image: Sequence[TypedImageCounts], n_classes: int) -> tuple[float, float, np.ndarray]:
    """HoVer-Net's ``(F_d, type accuracy, F_c per class (K))`` over the pooled pairs of all images; NaN if undefined."""
    paired_true, paired_predicted, unpaired_true, unpaired_predicted = (
        np.concatenate([np.zeros(0, np.int64), *(getattr(c, name) for c in per_image)])
        for name in ("paired_true", "paired_predicted", "unpaired_true", "unpaired_predicted")
    )
    tp_d = len(paired_true)
    f_d = float(_divide(2 * tp_d, 2 * tp_d + len(unpaired_predicted) + len(unpaired_true), np.nan))
    accuracy = float(_divide((paired_true == paired_predicted).sum(), tp_d, np.nan))
    f_c = np.zeros(n_classes)
    for index, type_id in enumerate(range(1, n_classes + 1)):
        true_is, predicted_is = paired_true == type_id, paired_predicted == type_id
        tp = (true_is & predicted_is).sum()
        fp_paired, fn_paired = (~true_is & predicted_is).sum(), (true_is & ~predicted_is).sum()
        fp_unpaired, fn_unpaired = (unpaired_predicted == type_id).sum(), (unpaired_true == type_id).sum()
        weighted = np.dot(F_C_WEIGHTS, (fp_paired, fn_paired, fp_unpaired, fn_unpaired))
        f_c[index] = _divide(2 * tp, 2 * tp + weighted, np.nan)
    return f_d, accuracy, f_c


@dataclass
class TypedMetrics:
    """Accumulates typed images; ``compute`` gives every score of the three definitions under flat keys."""

    class_names: Sequence[str]
    radius: float  # HoVer-Net's pairing radius in pixels (12 at 40x in their code)
    per_image: list[TypedImageCounts] = field(default_factory=list)
    tissues: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        keys = [class_key(name) for name in self.class_names]
        if not keys or "" in keys or len(set(keys)) != len(keys):
            raise ValueError(f"class names {list(self.class_names)}: expected distinct, non-empty names")
        if not np.isfinite(self.radius) or self.radius <= 0:
            raise ValueError(f"radius {self.radius}: expected a positive number of pixels")

    def update(
        self,
        true_labels: np.ndarray,
        true_types: NucleusTypes,
        predicted_labels: np.ndarray,
        predicted_types: NucleusTypes,
        tissue: str | None = None,
    ) -> TypedImageCounts:
        """Add one image: instance labels ``int HxW`` with their classes; ``tissue`` groups PanNuke's means."""
        counts = typed_image_counts(
            true_labels, true_types, predicted_labels, predicted_types, len(self.class_names), self.radius
        )
        self.per_image.append(counts)
        self.tissues.append(tissue)
        return counts

    def class_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(true, predicted)`` nuclei per image and class, ``int N x K``."""
        return np.stack([c.n_true for c in self.per_image]), np.stack([c.n_predicted for c in self.per_image])

    def compute(self) -> dict[str, float]:
        """``mpq_plus``, ``multi_r2``, ``pannuke_mpq``, ``pannuke_bpq``, ``f_d``, ``type_accuracy`` and per class
        ``pq_``, ``dq_``, ``sq_``, ``r2_``, ``pannuke_pq_``, ``f_c_``, ``n_true_``, ``n_predicted_`` + class key."""
        if not self.per_image:
            raise ValueError("no image was scored")
        named = [t is not None for t in self.tissues]
        if any(named) and not all(named):
            raise ValueError(f"tissue given for {sum(named)} of {len(named)} images, expected all or none")
        keys = [class_key(name) for name in self.class_names]
        pq, dq, sq = conic_pq(self.per_image)
        true_counts, predicted_counts = self.class_counts()
        r2 = multi_r2(true_counts, predicted_counts)
        pannuke_class, pannuke_mpq, pannuke_bpq = pannuke_pq(self.per_image, self.tissues if all(named) else None)
        f_d, accuracy, f_c = hover_net_type_stats(self.per_image, len(keys))
        results = {"mpq_plus": float(pq.mean()), "multi_r2": float(r2.mean())}
        results |= {"pannuke_mpq": pannuke_mpq, "pannuke_bpq": pannuke_bpq, "f_d": f_d, "type_accuracy": accuracy}
        for index, key in enumerate(keys):
            results |= {f"pq_{key}": float(pq[index]), f"dq_{key}": float(dq[index]), f"sq_{key}": float(sq[index])}
            results |= {f"r2_{key}": float(r2[index]), f"pannuke_pq_{key}": float(pannuke_class[index])}
            results[f"f_c_{key}"] = float(f_c[index])
            results[f"n_true_{key}"] = float(true_counts[:, index].sum())
            results[f"n_predicted_{key}"] = float(predicted_counts[:, index].sum())
        return results


def typed_scores(
    pairs: Iterable[tuple[np.ndarray, NucleusTypes, np.ndarray, NucleusTypes]],
    class_names: Sequence[str],
    radius: float,
    tissues: Sequence[str] | None = None,
) -> dict[str, float]:
    """Every typed score of ``(true labels, true types, predicted labels, predicted types)`` per image (labels
    ``int HxW``); ``radius`` pairs centroids in pixels (HoVer-Net: 12 at 40x); ``tissues`` one name per image."""
    metrics = TypedMetrics(class_names, radius)
    for index, (true_labels, true_types, predicted_labels, predicted_types) in enumerate(pairs):
        tissue = None if tissues is None else tissues[index]
        metrics.update(true_labels, true_types, predicted_labels, predicted_types, tissue)
    return metrics.compute()
