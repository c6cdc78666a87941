"""From a nucleus probability map to individual nuclei (the paper's open problem: touching nuclei).

``components``: connected components of the thresholded map (what the paper's binary output gives).
``watershed``: marker-controlled watershed on the distance transform of the thresholded mask (scikit-image): one
marker per local maximum of the smoothed distance to background, at least ``min_distance`` pixels apart, so two
touching round nuclei joined by a neck get two markers and are cut along the neck.
``distance``: for models with a distance head (Naylor et al., IEEE TMI 2018): markers are the h-maxima (height
``seed_height``) of the *predicted* distance map, and the watershed floods that map inside the thresholded mask.
The network has learnt where one nucleus ends and the next begins, which the geometry of a merged blob cannot tell.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.measure import label
from skimage.morphology import h_maxima, remove_small_holes, remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from nucleiseg.util.errors import ConfigError

METHODS = ("components", "watershed", "distance")


@dataclass(frozen=True)
class Postprocess:
    """Parameters of the separation into nuclei (the ``postprocess`` config group, whose
    ``conf/postprocess/default.yaml`` holds the defaults; :meth:`merged` completes a partial mapping with the
    defaults its caller passes down).

    ``method=auto`` is ``distance`` for a model with a distance head and ``watershed`` otherwise.
    """

    method: str
    min_distance: int  # watershed: minimum distance in pixels between two nucleus centres
    smoothing: float  # Gaussian sigma on the distance map before seeding
    min_area: int  # nuclei smaller than this (pixels) are dropped, after the separation
    fill_holes: int  # holes up to this size (pixels) inside a nucleus are filled
    seed_height: float  # distance: h of the h-maxima of the predicted distance (0-1)

    def __post_init__(self) -> None:
        if self.method not in ("auto", *METHODS):
            raise ConfigError(f"postprocess.method={self.method!r}: expected auto or one of {METHODS}")
        for name in ("min_distance", "min_area", "fill_holes"):
            if not isinstance(getattr(self, name), int | np.integer) or getattr(self, name) < 0:
                raise ConfigError(f"postprocess.{name}={getattr(self, name)!r}: expected a whole number >= 0")
        if self.smoothing < 0 or not 0 < self.seed_height <= 1:
            raise ConfigError(
                f"postprocess.smoothing={self.smoothing}, seed_height={self.seed_height}: expected smoothing >= 0 "
                "and 0 < seed_height <= 1"
            )

    @staticmethod
    def check_names(values: Mapping[str, Any] | None) -> None:
        """Unknown keys are refused with the valid ones named."""
        known = {f.name for f in fields(Postprocess)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ConfigError(f"postprocess: unknown key(s) {unknown}; expected some of {sorted(known)}")

    @classmethod
    def merged(cls, defaults: Mapping[str, Any], values: Mapping[str, Any] | None) -> Postprocess:
        """From a checkpoint's dict, a tuning trial or a few values: what ``values`` leaves out is taken from
        ``defaults`` (every parameter; the ``postprocess`` group of ``conf/``, which the caller composed), so a
        checkpoint from before a parameter existed gets its default."""
        cls.check_names(values)
        cls.check_names(defaults)
        return cls(**{**defaults, **(values or {})})

    def resolved(self, head: str) -> Postprocess:
        """``auto`` made concrete for a model with ``head``; ``distance`` without a distance head is an error."""
        if self.method == "auto":
            return replace(self, method="distance" if head == "distance" else "watershed")
        if self.method == "distance" and head != "distance":
            raise ConfigError("postprocess.method=distance needs a model trained with model.head=distance")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def methods_for(head: str) -> tuple[str, ...]:
    """The separation methods a model with ``head`` supports (evaluation scores each of them)."""
    return METHODS if head == "distance" else METHODS[:2]


def binarise(probability: np.ndarray, threshold: float) -> np.ndarray:
    """The one rule that makes a nucleus mask of a probability map: ``probability >= threshold`` (a boolean
    mask passes through). Masks, nuclei, overlays and every metric (whole split and per image) use it."""
    if probability.dtype == bool:
        return probability.copy()
    return probability >= threshold


def _foreground(probability: np.ndarray, threshold: float, settings: Postprocess) -> np.ndarray:
    foreground = binarise(probability, threshold)
    if settings.fill_holes:
        foreground = remove_small_holes(foreground, max_size=settings.fill_holes)
    if settings.min_area:
        foreground = remove_small_objects(foreground, max_size=settings.min_area - 1)
    return foreground


def _mark_every_component(markers: np.ndarray, components: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Give each component without a marker one at its highest point, so no nucleus is lost in the flooding."""
    unmarked = np.setdiff1d(np.unique(components[components > 0]), np.unique(components[markers > 0]))
    if unmarked.size:
        peaks = ndimage.maximum_position(height, components, unmarked)
        next_label = int(markers.max()) + 1
        for offset, (row, col) in enumerate(peaks):
            markers[row, col] = next_label + offset
    return markers


def separate_instances(
    probability: np.ndarray,
    threshold: float,
    settings: Postprocess,
    distance: np.ndarray | None = None,
) -> np.ndarray:
    """``float HxW`` probabilities (or a boolean mask) -> ``int32 HxW`` instance labels, 0 = background.

    ``settings``: the method and its parameters (``nucleiseg.config.settings.defaults("postprocess", method=...)``
    gives the defaults of ``conf/`` with a method of your choice).
    ``distance`` (``float HxW`` in [0, 1]) is the predicted distance map, needed by the ``distance`` method.
    """
    method = settings.method
    if method not in METHODS:
        raise ConfigError(f"postprocess.method={method!r}: expected one of {METHODS} (auto is resolved by the head)")
    foreground = _foreground(probability, threshold, settings)
    components = label(foreground, connectivity=2)
    if method == "components" or not components.any():
        return final_nuclei(components, settings)
    if method == "distance":
        if distance is None:
            raise ConfigError("postprocess.method=distance needs the predicted distance map (model.head=distance)")
        height = distance.astype(np.float64)
        if settings.smoothing:
            height = ndimage.gaussian_filter(height, settings.smoothing)
        height = np.where(foreground, height, 0.0)
        seeds = h_maxima(height, settings.seed_height).astype(bool) & foreground
        markers = label(seeds, connectivity=2).astype(np.int64)
    else:
        height = ndimage.distance_transform_edt(foreground)
        if settings.smoothing:
            height = ndimage.gaussian_filter(height, settings.smoothing)
        peaks = peak_local_max(height, min_distance=settings.min_distance, labels=components, exclude_border=False)
        markers = np.zeros(components.shape, dtype=np.int64)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    markers = _mark_every_component(markers, components, height)
    labels = watershed(-height, markers, mask=foreground)
    return final_nuclei(labels, settings)


def final_nuclei(labels: np.ndarray, settings: Postprocess) -> np.ndarray:
    """The nuclei as the config describes them, whatever the separation did: pieces smaller than ``min_area``
    dropped, then each nucleus's enclosed holes up to ``fill_holes`` pixels filled (a dropped piece inside a
    nucleus becomes its hole), relabelled 1..n. ``int HxW`` -> ``int32 HxW``.

    The separation cuts components into pieces, so the area rule must be applied to the pieces: applied to the
    components before it (as earlier versions did) it let 1-3 px slivers of a split through as nuclei."""
    labels = np.asarray(labels)
    if settings.min_area and labels.any():
        areas = np.bincount(labels.ravel())
        small = areas < settings.min_area
        small[0] = False
        if small.any():
            labels = np.where(small[labels], 0, labels)
    if settings.fill_holes and labels.any():
        labels = labels.copy()
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            region = np.pad(labels[box] == index, 1)
            holes, count = ndimage.label(ndimage.binary_fill_holes(region) & ~region)
            if not count:
                continue
            sizes = np.bincount(holes.ravel())
            fill = (sizes <= settings.fill_holes)[holes] & (holes > 0)
            fill = fill[1:-1, 1:-1] & (labels[box] == 0)  # background only: never another nucleus's pixels
            labels[box][fill] = index
    return relabel_sequential(labels)[0].astype(np.int32)
