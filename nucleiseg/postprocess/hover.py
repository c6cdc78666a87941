"""HoVer-Net's horizontal/vertical maps (Graham et al., Medical Image Analysis 2019): the training target and the
post-processing that turns predicted maps into nuclei.

Each nucleus pixel regresses its horizontal and vertical offset to the nucleus's centre of mass, scaled so that the
offsets run from -1 (left/top edge) through 0 (centre) to +1 (right/bottom edge). Between two touching nuclei the
maps jump from +1 to -1, so their Sobel gradient is large there: the post-processing turns that edge energy into
markers (the nucleus interiors) and floods a distance-like surface from them.

Our own code, transcribed from ``vqdang/hover_net`` (MIT licence) ``models/hovernet/targets.py``
(``gen_instance_hv_map``) and ``models/hovernet/post_proc.py`` (``__proc_np_hv``): HoVer-Net is not a pip package,
and its post-processing calls OpenCV for four operations (Sobel, min-max normalisation, a 3x3 Gaussian blur and a
morphological opening with an elliptic element), which would make OpenCV a dependency for two functions. Those
four are rebuilt below in NumPy/SciPy with OpenCV's kernels and border rule (``BORDER_REFLECT_101``, SciPy's
``mirror``); tests/postprocess/test_hover.py checks them against ``cv2`` when it is installed.

Where we differ from HoVer-Net's target code, on purpose:
- the offsets are ``column - centre`` and ``row - centre``. HoVer-Net computes ``np.arange(1, width + 1) - centre``
  in box coordinates, which puts the zero one pixel left of and above the rounded centre of mass (a disc of radius
  r gets slopes 1/(r-1) and 1/(r+1) on its two sides instead of 1/r); MONAI's ``ComputeHoVerMaps`` has no such shift;
- no training-crop bookkeeping: HoVer-Net drops instances under 30 px of the centre crop
  (``remove_small_objects(crop_ann, min_size=30)``, their maps stay 0) and splits an instance made of several
  pieces into one instance per piece (``fix_mirror_padding``, for mirror-padded augmentations). We keep every
  nucleus as labelled.

HoVer-Net's post-processing numbers (``__proc_np_hv``), for ``conf/postprocess/``: threshold 0.5 (nucleus
probability), min_object 10 (px), sobel_kernel 21, edge_threshold 0.4, smoothing_kernel 3 (Gaussian size, sigma from
OpenCV's rule), marker_opening 5 (elliptic element, px), min_marker 10 (px).
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from scipy import ndimage
from skimage.segmentation import relabel_sequential, watershed

from nucleiseg.util.errors import ConfigError

# OpenCV's fixed Gaussian kernels for sizes up to 9 when sigma <= 0 (``getGaussianKernel``'s small_gaussian_tab)
_OPENCV_SMALL_GAUSSIANS = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
    9: (0.015625, 0.05078125, 0.1171875, 0.19921875, 0.234375, 0.19921875, 0.1171875, 0.05078125, 0.015625),
}


def _check_instances(instances: np.ndarray) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.ndim != 2 or not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"instance labels: expected an integer HxW array, got {instances.dtype} {instances.shape}")
    if instances.size and instances.min() < 0:
        raise ValueError(f"instance labels: expected labels >= 0 (0 = background), found {instances.min()}")
    return instances


def _scaled_offsets(offsets: np.ndarray) -> np.ndarray:
    """Negative offsets divided by the largest negative magnitude, positive ones by the largest: [-1, 0] and [0, 1]
    (float32 arithmetic, as HoVer-Net's)."""
    offsets = offsets.astype(np.float32)
    negative, positive = offsets < 0, offsets > 0
    if negative.any():
        offsets[negative] /= -offsets[negative].min()
    if positive.any():
        offsets[positive] /= offsets[positive].max()
    return offsets


def hv_maps(instances: np.ndarray) -> np.ndarray:
    """``int HxW`` instance labels (0 = background) -> ``float32 2xHxW``: channel 0 the horizontal map (column
    offset to the nucleus's centre of mass, scaled to [-1, 1] separately on each side), channel 1 the vertical map
    (row offset, likewise); 0 in the background. The centre of mass is rounded half up to a pixel, as HoVer-Net's
    ``int(com + 0.5)``; both ramps cross 0 at that pixel."""
    instances = relabel_sequential(_check_instances(instances))[0]  # find_objects lists every id up to the largest
    maps = np.zeros((2, *instances.shape), dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        inside = instances[box] == index
        rows, cols = np.nonzero(inside)
        centre_row, centre_col = (math.floor(value + 0.5) for value in (rows.mean(), cols.mean()))
        for channel, offsets in ((0, cols - centre_col), (1, rows - centre_row)):
            maps[channel][box][inside] = _scaled_offsets(offsets)
    return maps


def _check_settings(**values: float) -> None:
    """Post-processing parameters: fractions strictly inside (0, 1), sizes whole numbers >= 0, kernel sizes odd."""
    for name, value in values.items():
        if name.endswith("threshold"):
            valid, expected = isinstance(value, Real) and 0 < value < 1, "a number with 0 < value < 1"
        elif name.startswith("min_"):
            valid, expected = _is_whole(value) and value >= 0, "a whole number of pixels >= 0"
        else:
            smallest = 3 if name == "sobel_kernel" else 1
            valid = _is_whole(value) and value >= smallest and value % 2 == 1
            expected = f"an odd whole number >= {smallest} (a kernel size in pixels)"
        if not valid:
            raise ConfigError(f"postprocess.{name}={value!r}: expected {expected}")


def _is_whole(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def sobel_kernels(order: int, size: int) -> np.ndarray:
    """OpenCV's 1-D Sobel kernel of ``order`` (0: smoothing, 1: first derivative) and odd ``size`` >= 3, as
    ``cv2.getDerivKernels(..., normalize=False)`` builds it: the binomial coefficients of degree ``size - 1 - order``
    differenced ``order`` times with ``[-1, 1]``. ``float64 (size,)``."""
    kernel = np.ones(1)
    for _ in range(size - 1 - order):
        kernel = np.convolve(kernel, [1.0, 1.0])
    for _ in range(order):
        kernel = np.convolve(kernel, [-1.0, 1.0])
    return kernel


def sobel(image: np.ndarray, *, dx: int, dy: int, size: int) -> np.ndarray:
    """``cv2.Sobel(image, cv2.CV_64F, dx, dy, ksize=size)`` (unnormalised, ``BORDER_REFLECT_101``): ``float HxW`` ->
    ``float64 HxW``. ``dx``/``dy``: derivative order along columns/rows."""
    image = np.asarray(image, dtype=np.float64)
    result = ndimage.correlate1d(image, sobel_kernels(dx, size), axis=1, mode="mirror")
    return ndimage.correlate1d(result, sobel_kernels(dy, size), axis=0, mode="mirror")


def _min_max(values: np.ndarray) -> np.ndarray:
    """``cv2.normalize(values, None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)``: a constant map becomes 0."""
    low, high = float(values.min()), float(values.max())
    scale = 1.0 / (high - low) if high > low else 0.0
    return (values * scale - low * scale).astype(np.float32)


def _gaussian_blur(image: np.ndarray, size: int) -> np.ndarray:
    """``cv2.GaussianBlur(image, (size, size), 0)``: OpenCV's fixed kernels up to size 9, else sigma
    ``0.3 * ((size - 1) / 2 - 1) + 0.8``."""
    if size in _OPENCV_SMALL_GAUSSIANS:
        kernel = np.array(_OPENCV_SMALL_GAUSSIANS[size])
    else:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
        steps = np.arange(size) - (size - 1) / 2
        kernel = np.exp(-(steps**2) / (2 * sigma**2))
        kernel /= kernel.sum()
    blurred = ndimage.correlate1d(image, kernel, axis=1, mode="mirror")
    return ndimage.correlate1d(blurred, kernel, axis=0, mode="mirror")


def ellipse(size: int) -> np.ndarray:
    """``cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))`` as ``bool size x size`` (for 5: a 5x5
    square without its four corner pairs)."""
    radius = size // 2
    element = np.zeros((size, size), dtype=bool)
    for row in range(size):
        offset = row - radius
        half_width = int(np.rint(radius * math.sqrt(1 - offset * offset / radius**2))) if radius else 0
        element[row, max(radius - half_width, 0) : min(radius + half_width + 1, size)] = True
    return element


def _without_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """HoVer-Net's ``remove_small_objects``: labelled regions with fewer than ``min_size`` pixels set to 0."""
    if min_size and labels.any():
        labels = np.where((np.bincount(labels.ravel()) < min_size)[labels], 0, labels)
    return labels


def hover_instances(
    probability: np.ndarray,
    hv: np.ndarray,
    *,
    threshold: float,
    min_object: int,
    sobel_kernel: int,
    edge_threshold: float,
    smoothing_kernel: int,
    marker_opening: int,
    min_marker: int,
) -> np.ndarray:
    """HoVer-Net's post-processing (``__proc_np_hv``): ``float HxW`` nucleus probability and ``float 2xHxW``
    predicted maps (channel 0 horizontal, 1 vertical, as :func:`hv_maps`) -> ``int32 HxW`` nuclei 1..n.

    The foreground is ``probability >= threshold`` without 4-connected pieces under ``min_object`` px. Each map is
    min-max scaled to [0, 1] and differentiated with a ``sobel_kernel``-sized Sobel (21 in HoVer-Net); the edge
    energy ``max(1 - scaled d/dx h, 1 - scaled d/dy v)`` (the signed derivatives min-max scaled to [0, 1] over the
    image; 0 outside the foreground) is high where a map falls from +1 to -1, on the border between two nuclei.
    Markers: foreground where the energy is below ``edge_threshold`` (0.4), holes filled, opened with a
    ``marker_opening`` ellipse (5), pieces under ``min_marker`` px (10) dropped. The watershed floods
    ``-(1 - energy)`` blurred by a ``smoothing_kernel`` Gaussian (3) inside the foreground; a foreground component
    without a marker stays background, as in HoVer-Net.
    """
    _check_settings(
        threshold=threshold,
        min_object=min_object,
        sobel_kernel=sobel_kernel,
        edge_threshold=edge_threshold,
        smoothing_kernel=smoothing_kernel,
        marker_opening=marker_opening,
        min_marker=min_marker,
    )
    probability, hv = np.asarray(probability, dtype=np.float32), np.asarray(hv, dtype=np.float32)
    if probability.ndim != 2 or hv.shape != (2, *probability.shape):
        raise ValueError(f"expected probability HxW and hv 2xHxW of the same HxW, got {probability.shape} {hv.shape}")
    foreground = _without_small(ndimage.label(probability >= threshold)[0], min_object) > 0
    if not foreground.any():
        return np.zeros(probability.shape, dtype=np.int32)
    # the derivatives of the scaled maps, differences of which HoVer-Net scales again to [0, 1]
    edge_h = 1 - _min_max(sobel(_min_max(hv[0]), dx=1, dy=0, size=sobel_kernel))
    edge_v = 1 - _min_max(sobel(_min_max(hv[1]), dx=0, dy=1, size=sobel_kernel))
    energy = np.maximum(np.maximum(edge_h, edge_v) - (1 - foreground), 0)
    height = -_gaussian_blur((1.0 - energy) * foreground, smoothing_kernel)
    markers = ndimage.binary_fill_holes(foreground & (energy < edge_threshold))
    element = ellipse(marker_opening)
    # OpenCV's opening leaves the image border alone (outside counts as set for the erosion), SciPy's would erode it
    markers = ndimage.binary_erosion(markers, element, border_value=1)
    markers = ndimage.binary_dilation(markers, element, border_value=0)
    markers = _without_small(ndimage.label(markers)[0], min_marker)
    labels = watershed(height, markers=markers, mask=foreground)
    return relabel_sequential(labels)[0].astype(np.int32)
