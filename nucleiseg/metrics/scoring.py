"""Everything one evaluation reports, accumulated image by image: the paper's pixel metrics over the whole split
(torchmetrics), their per-image mean and spread, and instance metrics for each separation method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from nucleiseg.metrics.instance import InstanceMetrics
from nucleiseg.metrics.pixel import PerImageOverlap, pixel_metrics


class Scorer:
    """``update(truth instances, probability, {method: predicted instances})`` per image, then ``compute``."""

    def __init__(self, threshold: float, iou_threshold: float, methods: Sequence[str]) -> None:
        # computed by this process alone, also on rank 0 after a DDP run: no cross-process sync
        self.pixels = pixel_metrics(threshold, sync_on_compute=False)
        self.per_image = PerImageOverlap(threshold, sync_on_compute=False)
        self.methods = tuple(methods)
        self.instances = {method: InstanceMetrics(iou_threshold) for method in self.methods}
        self.n_images = 0

    def update(self, truth: np.ndarray, probability: np.ndarray, predicted: Mapping[str, np.ndarray]) -> None:
        prediction = torch.from_numpy(np.ascontiguousarray(probability))[None]
        target = torch.from_numpy(truth > 0)[None].int()
        self.pixels.update(prediction, target)
        self.per_image.update(prediction, target)
        for method, accumulator in self.instances.items():
            accumulator.update(truth, predicted[method])
        self.n_images += 1

    def compute(self, prefix: str) -> dict[str, float]:
        results = {f"{prefix}/{k}": float(v) for k, v in self.pixels.compute().items()}
        results.update({f"{prefix}/{k}": float(v) for k, v in self.per_image.compute().items()})
        for method, accumulator in self.instances.items():
            results.update({f"{prefix}/{k}_{method}": v for k, v in accumulator.compute().items()})
        results["n_images"] = self.n_images
        return results
