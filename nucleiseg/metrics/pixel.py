"""Pixel-level metrics of the paper (Table III): Jaccard, F1, recall, precision and accuracy.

Thin over torchmetrics: one MetricCollection per stage, computed on the thresholded probability, accumulated
over the whole split (micro average: the paper's numbers are over all test pixels).
"""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)

PIXEL_METRICS = ("jaccard", "f1", "recall", "precision", "accuracy")


def pixel_metrics(threshold: float = 0.5, prefix: str = "") -> MetricCollection:
    """Metrics taking ``preds`` (probabilities, any shape) and ``target`` (0/1, same shape).

    Empty cases: no nucleus in either prediction or truth is perfect agreement for Jaccard and F1 (1.0);
    precision and recall keep torchmetrics' 0 for an empty denominator.
    """
    return MetricCollection(
        {
            "jaccard": BinaryJaccardIndex(threshold=threshold, zero_division=1.0),
            "f1": BinaryF1Score(threshold=threshold, zero_division=1.0),
            "recall": BinaryRecall(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "accuracy": BinaryAccuracy(threshold=threshold),
        },
        prefix=prefix,
    )
