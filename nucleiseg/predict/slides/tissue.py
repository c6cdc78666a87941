"""Where the tissue is, on a low-resolution view of the slide: Otsu's threshold on the saturation channel (stained
tissue is coloured, glass and background are grey or white), then morphology (closing, small specks removed,
small holes filled). The standard first step of whole-slide pipelines (e.g. TIAToolbox's Otsu tissue masker,
HistoQC); scikit-image does the work."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu
from skimage.morphology import disk, remove_small_holes, remove_small_objects

MIN_SATURATION = 0.05  # below this everywhere there is no stained tissue at all (Otsu would split the noise)


GREY_SPREAD = 6  # largest difference between colour channels of a greyscale scan (JPEG noise included)
MIN_DARKNESS = 0.05


def is_greyscale(thumbnail: np.ndarray) -> bool:
    """Whether a view has no colour (a greyscale scan, or an RGB file holding one)."""
    channels = thumbnail.astype(np.int16)
    spread = np.max(channels, axis=-1) - np.min(channels, axis=-1)
    return bool(np.percentile(spread, 99) <= GREY_SPREAD)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of ``uint8 HxWx3`` as ``skimage.color.rgb2hsv`` computes it ((max - min) / max, 0 where
    max - min is 0), without the hue and value it also computes: a third of its time on a slide's thumbnail."""
    channels = rgb.astype(np.float64) * (1.0 / 255.0)  # (as skimage scales: bit for bit the same values)
    top = channels.max(axis=-1)
    delta = top - channels.min(axis=-1)
    return np.divide(delta, top, out=np.zeros_like(delta), where=delta > 0)


def tissue_mask(thumbnail: np.ndarray, min_object_fraction: float = 1e-4) -> np.ndarray:
    """``uint8 HxWx3`` low-resolution view -> boolean tissue mask of the same size. A greyscale view has no
    saturation to threshold: tissue is what is darker than the glass (Otsu on darkness)."""
    greyscale = is_greyscale(thumbnail)
    if greyscale:
        signal, floor = 1.0 - thumbnail.mean(axis=-1) / 255.0, MIN_DARKNESS
    else:
        signal, floor = saturation(thumbnail), MIN_SATURATION
    if signal.max() < floor or signal.max() - signal.min() < floor:
        return np.zeros(signal.shape, bool)
    if greyscale:
        # glass, stroma and nuclei are three levels of darkness: tissue is everything above the lowest
        try:
            threshold = max(threshold_multiotsu(signal, classes=3)[0], floor)
        except ValueError:  # two grey levels only (ink on white): one threshold is all there is
            threshold = max(threshold_otsu(signal), floor)
    else:
        threshold = max(threshold_otsu(signal), floor)
    mask = signal > threshold
    mask = ndimage.binary_closing(mask, structure=disk(2))
    min_size = max(4, int(min_object_fraction * mask.size))
    mask = remove_small_objects(mask, max_size=min_size - 1)
    return remove_small_holes(mask, max_size=min_size * 4)


def tissue_fraction(mask: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Share of tissue in ``box`` = (left, top, right, bottom) in the mask's pixels (fractional edges)."""
    left, top = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    right, bottom = min(mask.shape[1], int(np.ceil(box[2]))), min(mask.shape[0], int(np.ceil(box[3])))
    if right <= left or bottom <= top:
        return 0.0
    return float(mask[top:bottom, left:right].mean())
