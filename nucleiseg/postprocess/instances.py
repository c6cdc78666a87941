"""From a nucleus probability map to individual nuclei (the paper's open problem: touching nuclei).

``components``: connected components of the thresholded map (what the paper's binary output gives).
``watershed``: marker-controlled watershed on the distance transform (scikit-image): one marker per local
maximum of the smoothed distance to background, at least ``min_distance`` pixels apart, so two touching round
nuclei joined by a neck get two markers and are cut along the neck.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.measure import label
from skimage.morphology import remove_small_holes, remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from nucleiseg.errors import ConfigError

METHODS = ("components", "watershed")


def separate_instances(
    probability: np.ndarray,
    threshold: float = 0.5,
    method: str = "watershed",
    min_distance: int = 4,
    smoothing: float = 1.0,
    min_area: int = 10,
    fill_holes: int = 30,
) -> np.ndarray:
    """``float HxW`` probabilities (or a boolean mask) -> ``int32 HxW`` instance labels, 0 = background.

    Objects smaller than ``min_area`` pixels are dropped and holes up to ``fill_holes`` pixels filled before
    separating; ``min_distance`` and ``smoothing`` (Gaussian sigma on the distance map) set how eagerly
    the watershed splits: larger values merge more.
    """
    if method not in METHODS:
        raise ConfigError(f"postprocess.method={method!r}: expected one of {METHODS}")
    foreground = probability >= threshold if probability.dtype != bool else probability.copy()
    if fill_holes:
        foreground = remove_small_holes(foreground, max_size=fill_holes)
    if min_area:
        foreground = remove_small_objects(foreground, max_size=min_area - 1)
    components = label(foreground, connectivity=2)
    if method == "components" or not components.any():
        return components.astype(np.int32)
    distance = ndimage.distance_transform_edt(foreground)
    if smoothing:
        distance = ndimage.gaussian_filter(distance, smoothing)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros_like(components)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # every component keeps at least one marker, so no nucleus disappears in the separation
    unmarked = np.setdiff1d(np.unique(components[components > 0]), np.unique(components[markers > 0]))
    for index in unmarked:
        rows, cols = np.nonzero(components == index)
        centre = np.argmax(distance[rows, cols])
        markers[rows[centre], cols[centre]] = markers.max() + 1
    labels = watershed(-distance, markers, mask=foreground)
    return relabel_sequential(labels)[0].astype(np.int32)


def separate_with_config(
    probability: np.ndarray, threshold: float, cfg: Mapping, method: str | None = None
) -> np.ndarray:
    """:func:`separate_instances` with the parameters of the ``postprocess`` config group."""
    return separate_instances(
        probability,
        threshold,
        method or cfg["method"],
        cfg["min_distance"],
        cfg["smoothing"],
        cfg["min_area"],
        cfg["fill_holes"],
    )
