"""StarDist's star-convex polygons (Schmidt et al., MICCAI 2018): the training targets and the post-processing
that turns predicted object probabilities and ray distances into nuclei.

Every nucleus pixel predicts the probability of being an object centre (the target is the nucleus's distance
transform, normalised to 1 at its deepest point) and the distance to the nucleus border along ``n_rays`` rays at
equal angles. Each pixel above a probability threshold proposes a polygon; non-maximum suppression keeps the most
probable of overlapping ones, which are drawn as the nuclei.

The geometry, the suppression and the drawing are the ``stardist`` package's own functions (its C++ core runs
without TensorFlow): ``edt_prob``, ``star_dist``, ``non_maximum_suppression`` and ``polygons_to_label``. What we add
is the orientation (channels first), the checks, and the steps StarDist's ``predict_instances`` does around them,
taken from ``stardist/models/base.py`` (``_predict_sparse_generator``) and ``model2d.py``
(``_instances_from_prediction``): distances floored at 1e-3, candidates at least ``border`` pixels inside the image,
polygons drawn in increasing probability so the more probable one wins where two overlap. StarDist's subsampling
``grid`` is (1, 1) here: our networks predict at full resolution.

StarDist's defaults, for ``conf/postprocess/``: prob_threshold 0.5, nms_threshold 0.4 (``StarDistBase.thresholds``
when no ``thresholds.json`` was optimised), border 2 (``b`` of ``_predict_sparse_generator``).
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from skimage.segmentation import relabel_sequential

from nucleiseg.util.errors import ConfigError

# StarDist's _prep in _predict_sparse_generator: a polygon needs positive radii (a numerical floor, not a setting)
SMALLEST_DISTANCE = 1e-3
# star_dist reads the labels as uint16
MOST_NUCLEI = np.iinfo(np.uint16).max


def _check_instances(instances: np.ndarray) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.ndim != 2 or not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"instance labels: expected an integer HxW array, got {instances.dtype} {instances.shape}")
    if instances.size and instances.min() < 0:
        raise ValueError(f"instance labels: expected labels >= 0 (0 = background), found {instances.min()}")
    instances = relabel_sequential(instances)[0]
    if instances.max(initial=0) > MOST_NUCLEI:
        raise ValueError(
            f"instance labels: {instances.max()} nuclei in one image, StarDist handles at most {MOST_NUCLEI}"
        )
    return instances


def star_targets(instances: np.ndarray, n_rays: int) -> tuple[np.ndarray, np.ndarray]:
    """``int HxW`` instance labels (0 = background) -> StarDist's targets ``(probability float32 HxW, distances
    float32 n_rays x H x W)``.

    ``probability``: each nucleus's Euclidean distance transform divided by its maximum (``edt_prob``; 1 at the
    centre, small at the border, 0 in the background). ``distances[k]``: for every nucleus pixel, the distance in
    pixels to the nucleus border along the ray at angle ``2 pi k / n_rays`` (``star_dist``; ray 0 points along the
    columns, ray ``n_rays / 4`` down the rows), 0 in the background.
    """
    if not isinstance(n_rays, int | np.integer) or isinstance(n_rays, bool) or n_rays < 3:
        raise ConfigError(f"n_rays={n_rays!r}: expected a whole number of rays >= 3")
    from stardist import edt_prob, star_dist  # deferred: stardist pulls in numba and csbdeep

    instances = _check_instances(instances)
    if not instances.any():
        return np.zeros(instances.shape, np.float32), np.zeros((n_rays, *instances.shape), np.float32)
    probability = edt_prob(instances).astype(np.float32)
    distances = np.moveaxis(star_dist(instances, int(n_rays)), -1, 0)
    return probability, np.ascontiguousarray(distances, dtype=np.float32)


def _check_settings(prob_threshold: float, nms_threshold: float, border: int) -> None:
    for name, value in (("prob_threshold", prob_threshold), ("nms_threshold", nms_threshold)):
        if not isinstance(value, Real) or isinstance(value, bool) or not 0 < value < 1:
            raise ConfigError(f"postprocess.{name}={value!r}: expected a number with 0 < value < 1")
    if not isinstance(border, int | np.integer) or isinstance(border, bool) or border < 0:
        raise ConfigError(f"postprocess.border={border!r}: expected a whole number of pixels >= 0")


def star_instances(
    probability: np.ndarray,
    distances: np.ndarray,
    *,
    prob_threshold: float,
    nms_threshold: float,
    border: int,
) -> np.ndarray:
    """StarDist's post-processing: ``float HxW`` object probability and ``float n_rays x H x W`` ray distances
    (pixels, as :func:`star_targets`) -> ``int32 HxW`` nuclei 1..n (0 = background).

    Candidates are the pixels with ``probability > prob_threshold`` (StarDist: 0.5) at least ``border`` pixels
    (StarDist: 2) from the image edge; a polygon is suppressed when it overlaps a more probable kept one by more
    than ``nms_threshold`` (StarDist: 0.4) of the smaller one's area. No candidate gives an empty image.
    """
    _check_settings(prob_threshold, nms_threshold, border)
    probability, distances = np.asarray(probability, np.float32), np.asarray(distances, np.float32)
    if probability.ndim != 2 or distances.ndim != 3 or distances.shape[1:] != probability.shape:
        raise ValueError(
            f"expected probability HxW and distances n_rays x H x W, got {probability.shape} {distances.shape}"
        )
    if distances.shape[0] < 3:
        raise ValueError(f"distances: expected at least 3 rays, got {distances.shape[0]}")
    from stardist import non_maximum_suppression, polygons_to_label  # deferred: stardist pulls in numba and csbdeep

    candidates = probability > prob_threshold
    if border:
        candidates[:border], candidates[-border:], candidates[:, :border], candidates[:, -border:] = (False,) * 4
    if not candidates.any():
        return np.zeros(probability.shape, dtype=np.int32)
    rays_last = np.maximum(SMALLEST_DISTANCE, np.moveaxis(distances, 0, -1))
    points, scores, kept = non_maximum_suppression(
        rays_last, probability, grid=(1, 1), b=border, nms_thresh=nms_threshold, prob_thresh=prob_threshold
    )
    labels = polygons_to_label(kept, points, prob=scores, shape=probability.shape)
    return relabel_sequential(labels)[0].astype(np.int32)
