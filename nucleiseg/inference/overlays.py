"""Pictures of predictions: error overlays (paper Figures 9-11) for MLflow and the report.

``error_overlay`` colours true positives green, false positives red and false negatives blue over the image.
"""

from __future__ import annotations

import numpy as np

TP_RGB, FP_RGB, FN_RGB = (0, 200, 0), (230, 0, 0), (0, 90, 255)


def error_overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image uint8 HxWx3``, boolean ``truth``/``prediction`` ``HxW`` -> ``uint8 HxWx3`` overlay."""
    overlay = image.astype(np.float32).copy()
    for region, colour in ((truth & prediction, TP_RGB), (~truth & prediction, FP_RGB), (truth & ~prediction, FN_RGB)):
        overlay[region] = (1 - alpha) * overlay[region] + alpha * np.asarray(colour, dtype=np.float32)
    return overlay.round().astype(np.uint8)


def comparison_panel(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Side by side: image | ground truth | prediction | error overlay, ``uint8 Hx4Wx3``."""
    as_rgb = lambda mask: np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)  # noqa: E731
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate(
        [image, gap, as_rgb(truth), gap, as_rgb(prediction), gap, error_overlay(image, truth, prediction)], axis=1
    )
