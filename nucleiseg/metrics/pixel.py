"""Pixel-level metrics of the paper (Table III): Jaccard, F1, recall, precision and accuracy.

Thin over torchmetrics: one MetricCollection per stage, accumulated over the whole split (micro average: the
paper's numbers are over all test pixels). Probabilities are binarised by the project's one rule
(:func:`nucleiseg.postprocess.instances.binarise`, ``>=``) before torchmetrics sees them (its own threshold is
``>``), so the whole split, each image, the masks and the nuclei agree on every pixel, even at exactly the
threshold (common in bf16).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)
from torchmetrics.utilities import dim_zero_cat

from nucleiseg.postprocess.instances import binarise


class BinarisedMetrics(MetricCollection):
    """A MetricCollection that binarises ``preds`` at ``threshold`` with :func:`binarise` first."""

    def __init__(self, metrics: dict[str, Metric], threshold: float, prefix: str = "") -> None:
        super().__init__(metrics, prefix=prefix)
        self.binarising_threshold = float(threshold)

    def _binary(self, preds: torch.Tensor) -> torch.Tensor:
        return binarise(preds, self.binarising_threshold).int()

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(self._binary(preds), target)

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> dict:
        return super().forward(self._binary(preds), target)


def pixel_metrics(threshold: float, prefix: str = "", sync_on_compute: bool = True) -> MetricCollection:
    """Metrics taking ``preds`` (probabilities, any shape) and ``target`` (0/1, same shape).

    Empty cases: no nucleus in either prediction or truth is perfect agreement for Jaccard and F1 (1.0);
    precision and recall keep torchmetrics' 0 for an empty denominator. ``sync_on_compute=False`` for metrics
    one process computes alone (post-test scoring on rank 0 of a DDP run).
    """
    options = {"sync_on_compute": sync_on_compute}  # preds arrive as 0/1 (BinarisedMetrics)
    return BinarisedMetrics(
        {
            "jaccard": BinaryJaccardIndex(zero_division=1.0, **options),
            "f1": BinaryF1Score(zero_division=1.0, **options),
            "recall": BinaryRecall(**options),
            "precision": BinaryPrecision(**options),
            "accuracy": BinaryAccuracy(**options),
        },
        threshold,
        prefix=prefix,
    )


class PerImageOverlap(Metric):
    """Jaccard and F1 of every image separately, for their mean and spread over a split.

    Complements the whole-split numbers: one large image cannot hide many poor small ones. An image with no
    nucleus in truth or prediction scores 1 (perfect agreement), as in :func:`pixel_metrics`.
    """

    full_state_update = False

    def __init__(self, threshold: float, sync_on_compute: bool = True) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self.threshold = threshold
        self.add_state("stats", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds`` probabilities ``BxHxW`` (or ``Bx1xHxW``), ``target`` 0/1 of the same shape."""
        # counted here rather than with torchmetrics' binary_stat_scores(multidim_average="samplewise"),
        # which fails on a batch of one image (it squeezes the sample dimension away before stacking)
        predicted = binarise(preds.reshape(preds.shape[0], -1), self.threshold)
        truth = target.reshape(target.shape[0], -1) > 0
        self.stats.append(
            torch.stack(
                [
                    (predicted & truth).sum(1),
                    (predicted & ~truth).sum(1),
                    (~predicted & ~truth).sum(1),
                    (~predicted & truth).sum(1),
                ],
                dim=1,
            )
        )

    def per_image(self) -> dict[str, torch.Tensor]:
        stats = dim_zero_cat(self.stats).double()
        tp, fp, fn = stats[:, 0], stats[:, 1], stats[:, 3]
        empty = (tp + fp + fn) == 0
        jaccard = torch.where(empty, torch.ones_like(tp), tp / (tp + fp + fn).clamp_min(1))
        f1 = torch.where(empty, torch.ones_like(tp), 2 * tp / (2 * tp + fp + fn).clamp_min(1))
        return {"jaccard": jaccard, "f1": f1}

    def compute(self) -> dict[str, torch.Tensor]:
        values = self.per_image()
        out = {}
        for name, series in values.items():
            out[f"{name}_image_mean"] = series.mean().float()
            out[f"{name}_image_std"] = (
                series.std(unbiased=False) if series.numel() > 1 else torch.zeros((), dtype=series.dtype)
            ).float()
        return out
