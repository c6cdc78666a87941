"""From a nucleus probability map to individual nuclei (the paper's open problem: touching nuclei).

``components``: connected components of the thresholded map (what the paper's binary output gives).
``watershed``: marker-controlled watershed on the distance transform of the thresholded mask (scikit-image): one
marker per local maximum of the smoothed distance to background, at least ``min_distance`` pixels apart, so two
touching round nuclei joined by a neck get two markers and are cut along the neck.
``distance``: for models with a distance head (Naylor et al., IEEE TMI 2018): markers are the h-maxima (height
``seed_height``) of the *predicted* distance map, and the watershed floods that map inside the thresholded mask.
The network has learnt where one nucleus ends and the next begins, which the geometry of a merged blob cannot tell.
``hover``: for the HV head, HoVer-Net's Sobel-energy markers and watershed (:mod:`nucleiseg.postprocess.hover`).
``stardist``: for the StarDist head, its star-convex polygons after non-maximum suppression
(:mod:`nucleiseg.postprocess.star`).
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

METHODS = ("components", "watershed", "distance", "hover", "stardist")
# the maps a method separates with, beyond the nucleus probability (what a head predicts)
NEEDS = {"distance": ("distance",), "hover": ("hv",), "stardist": ("star_probability", "star_distances")}
# the head each method needs, and the method postprocess.method=auto gives a head (nucleiseg.models.heads agrees)
HEAD_OF = {"distance": "distance", "hover": "hv", "stardist": "stardist"}
AUTO = {"binary": "watershed", "distance": "distance", "hv": "hover", "stardist": "stardist"}
# the parameters each method reads (the others are carried along, unused)
_FINAL = ("min_area", "fill_holes")
PARAMETERS = {
    "components": _FINAL,
    "watershed": ("min_distance", "smoothing", *_FINAL),
    "distance": ("seed_height", "smoothing", *_FINAL),
    "hover": tuple(
        f"hover_{n}"
        for n in ("min_object", "sobel_kernel", "edge_threshold", "smoothing_kernel", "marker_opening", "min_marker")
    )
    + _FINAL,  # fmt: skip
    "stardist": ("star_prob_threshold", "star_nms_threshold", "star_border", *_FINAL),
}


def _whole(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool) and bool(np.isfinite(value))


def _odd(value: Any) -> bool:
    return _whole(value) and value % 2 == 1


# every parameter's rule: (what it must be, test); the one place these are written (checkpoints are checked by them)
RULES: dict[str, tuple[str, Any]] = {
    "method": (f"auto or one of {', '.join(METHODS)}", lambda v: v in ("auto", *METHODS)),
    "min_distance": ("a whole number >= 0", _whole),
    "smoothing": ("a number >= 0", lambda v: _number(v) and v >= 0),
    "min_area": ("a whole number >= 0", _whole),
    "fill_holes": ("a whole number >= 0", _whole),
    "seed_height": ("a number above 0, at most 1", lambda v: _number(v) and 0 < v <= 1),
    "hover_min_object": ("a whole number >= 0", _whole),
    "hover_sobel_kernel": ("an odd whole number between 3 and 31", lambda v: _odd(v) and 3 <= v <= 31),
    "hover_edge_threshold": ("a number between 0 and 1", lambda v: _number(v) and 0 < v < 1),
    "hover_smoothing_kernel": ("an odd whole number", _odd),
    "hover_marker_opening": ("a whole number >= 1", lambda v: _whole(v) and v >= 1),
    "hover_min_marker": ("a whole number >= 0", _whole),
    "star_prob_threshold": ("a number between 0 and 1", lambda v: _number(v) and 0 < v < 1),
    "star_nms_threshold": ("a number between 0 and 1", lambda v: _number(v) and 0 < v < 1),
    "star_border": ("a whole number >= 0", _whole),
}


@dataclass(frozen=True)
class Postprocess:
    """Parameters of the separation into nuclei (the ``postprocess`` config group, whose
    ``conf/postprocess/default.yaml`` holds the defaults; :meth:`merged` completes a partial mapping with the
    defaults its caller passes down).

    ``method=auto`` is the head's own way (:data:`AUTO`): ``watershed`` for the paper's binary head, ``distance``,
    ``hover`` (HoVer-Net) and ``stardist`` for the heads of those names. The ``hover_*`` values are the numbers
    HoVer-Net's post-processing hard-codes, the ``star_*`` ones StarDist's (both tuned on validation).
    """

    method: str
    min_distance: int  # watershed: minimum distance in pixels between two nucleus centres
    smoothing: float  # Gaussian sigma on the distance map before seeding
    min_area: int  # nuclei smaller than this (pixels) are dropped, after the separation
    fill_holes: int  # holes up to this size (pixels) inside a nucleus are filled
    seed_height: float  # distance: h of the h-maxima of the predicted distance (0-1)
    hover_min_object: int  # hover: foreground pieces under this many pixels dropped
    hover_sobel_kernel: int  # hover: size of the Sobel kernel on the HV maps
    hover_edge_threshold: float  # hover: edge energy above which a pixel is no marker
    hover_smoothing_kernel: int  # hover: Gaussian size on the flooded surface
    hover_marker_opening: int  # hover: elliptic opening of the markers (pixels)
    hover_min_marker: int  # hover: markers under this many pixels dropped
    star_prob_threshold: float  # stardist: object probability above which a pixel proposes a polygon
    star_nms_threshold: float  # stardist: overlap above which the less probable polygon is suppressed
    star_border: int  # stardist: no polygon centred closer than this to the image edge

    def __post_init__(self) -> None:
        self.check_values(asdict(self))

    @staticmethod
    def check_values(values: Mapping[str, Any] | None, prefix: str = "postprocess") -> None:
        """Refuse an unknown name or a value against its rule, in one line naming ``prefix.NAME``."""
        Postprocess.check_names(values)
        for name, value in (values or {}).items():
            expected, rule = RULES[name]
            if value is not None and not rule(value):
                raise ConfigError(f"{prefix}.{name}={value!r}: expected {expected}")

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
        """``auto`` made concrete for a model with ``head``; a method whose maps the head does not predict is an
        error naming both."""
        if self.method == "auto":
            return replace(self, method=AUTO.get(head, "watershed"))
        if self.method in HEAD_OF and HEAD_OF[self.method] != head:
            raise ConfigError(
                f"postprocess.method={self.method} needs a model trained with model.head={HEAD_OF[self.method]} "
                f"(this one: {head})"
            )
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def own(self) -> dict[str, Any]:
        """The method and the parameters it reads (for logs and cards: the others are carried along unused)."""
        return {"method": self.method, **{name: getattr(self, name) for name in PARAMETERS.get(self.method, ())}}


def methods_for(head: str) -> tuple[str, ...]:
    """The separation methods a model with ``head`` supports (evaluation scores each of them): the two that need
    only the nucleus probability, and the head's own."""
    own = AUTO.get(head, "watershed")
    return ("components", "watershed") + ((own,) if own not in ("components", "watershed") else ())


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
    maps: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """``float HxW`` probabilities (or a boolean mask) -> ``int32 HxW`` instance labels, 0 = background.

    ``settings``: the method and its parameters (``nucleiseg.config.settings.defaults("postprocess", method=...)``
    gives the defaults of ``conf/`` with a method of your choice). ``maps``: what the head predicted beyond the
    nucleus probability, needed by its own method: ``distance`` (``float HxW`` in [0, 1]), ``hv`` (``float 2xHxW``,
    HoVer-Net's maps), ``star_probability`` (``float HxW``) and ``star_distances`` (``float n_rays x H x W``).
    """
    method = settings.method
    if method not in METHODS:
        raise ConfigError(f"postprocess.method={method!r}: expected one of {METHODS} (auto is resolved by the head)")
    maps = maps or {}
    if any(maps.get(key) is None for key in NEEDS.get(method, ())):
        raise ConfigError(
            f"postprocess.method={method} needs the predicted {' and '.join(NEEDS[method])} maps "
            f"(model.head={HEAD_OF[method]})"
        )
    if method == "hover":
        return final_nuclei(_hover(probability, threshold, maps["hv"], settings), settings)
    if method == "stardist":
        return final_nuclei(_stardist(maps["star_probability"], maps["star_distances"], settings), settings)
    foreground = _foreground(probability, threshold, settings)
    components = label(foreground, connectivity=2)
    if method == "components" or not components.any():
        return final_nuclei(components, settings)
    if method == "distance":
        height = maps["distance"].astype(np.float64)
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


def _hover(probability: np.ndarray, threshold: float, hv: np.ndarray, settings: Postprocess) -> np.ndarray:
    """HoVer-Net's separation (:func:`nucleiseg.postprocess.hover.hover_instances`) at the model's threshold."""
    from nucleiseg.postprocess.hover import hover_instances

    return hover_instances(
        probability.astype(np.float32),
        hv,
        threshold=threshold,
        min_object=settings.hover_min_object,
        sobel_kernel=settings.hover_sobel_kernel,
        edge_threshold=settings.hover_edge_threshold,
        smoothing_kernel=settings.hover_smoothing_kernel,
        marker_opening=settings.hover_marker_opening,
        min_marker=settings.hover_min_marker,
    )


def _stardist(probability: np.ndarray, distances: np.ndarray, settings: Postprocess) -> np.ndarray:
    """StarDist's polygons (:func:`nucleiseg.postprocess.star.star_instances`)."""
    from nucleiseg.postprocess.star import star_instances

    return star_instances(
        probability,
        distances,
        prob_threshold=settings.star_prob_threshold,
        nms_threshold=settings.star_nms_threshold,
        border=settings.star_border,
    )


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
