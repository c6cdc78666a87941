"""Decode images and masks from disk into the project's array conventions.

Images leave this module as ``uint8 HxWx3`` RGB; masks as ``int32 HxW`` instance labels (0 = background).
Every reader in the project goes through these two functions, so grayscale, RGBA, 16-bit and binary/instance
mask conventions are handled in one place.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential

from nucleiseg.errors import ImageReadError

TIFF_SUFFIXES = (".tif", ".tiff")
# every image file the project reads (images and masks), the one list the readers, evaluate and predict share
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


# Images decoded whole (not through the slide reader's windows) stay within Pillow's own bomb limit: twice
# Image.MAX_IMAGE_PIXELS (about 179 megapixels, 540 MB of RGB). Larger images are slides: nucleiseg.slides.
MAX_WHOLE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS


class TooLargeError(ImageReadError):
    """An image is too large to decode whole (or claims to be: a decompression bomb)."""


def _too_large(path: Path, width: int, height: int) -> TooLargeError:
    return TooLargeError(
        f"{path}: {width}x{height} pixels is beyond what is decoded whole ({MAX_WHOLE_PIXELS / 1e6:.0f} MP); "
        "save it as a tiled (pyramidal) TIFF, which is read window by window (e.g. vips tiffsave IN OUT.tif "
        "--tile --pyramid --compression jpeg)"
    )


def _decode_with_pillow(source, path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened = Image.open(source)
        except Image.DecompressionBombError as error:  # Pillow refuses at open past twice its limit
            raise TooLargeError(f"{path}: {error}; save it as a tiled (pyramidal) TIFF to read it in windows") from None
    with opened as image:
        if image.width * image.height > MAX_WHOLE_PIXELS:
            raise _too_large(path, image.width, image.height)
        with warnings.catch_warnings():  # within our limit on purpose: no "decompression bomb" warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()  # forces a full decode, so a truncated file fails here and not later
        if image.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(image, dtype=np.uint16)
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        return np.asarray(image)


def _decode_with_tifffile(source, path: Path) -> np.ndarray:
    """TIFF flavours Pillow cannot decode; the size the file declares is checked before anything is decoded (a
    few kilobytes can declare gigabytes)."""
    with tifffile.TiffFile(source) as tiff:
        page = tiff.pages.first
        if page.imagewidth * page.imagelength > MAX_WHOLE_PIXELS:
            raise _too_large(path, page.imagewidth, page.imagelength)
        return np.asarray(page.asarray())


def _decode(path: Path, data: bytes | None = None) -> np.ndarray:
    """Decode ``path`` (or ``data``, named by ``path``) to a NumPy array, raising ImageReadError on failure.

    Pillow reads PNG/JPEG and the common TIFFs (including the LZW ones MoNuSeg ships); tifffile takes over for
    TIFF flavours Pillow cannot decode (multi-sample 16-bit, planar, BigTIFF).
    """
    try:
        try:
            return _decode_with_pillow(io.BytesIO(data) if data is not None else path, path)
        except TooLargeError:
            raise
        except (UnidentifiedImageError, OSError, ValueError) as pillow_error:
            if path.suffix.lower() not in TIFF_SUFFIXES or isinstance(pillow_error, FileNotFoundError):
                raise
            return _decode_with_tifffile(io.BytesIO(data) if data is not None else path, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except TooLargeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, tifffile.TiffFileError) as error:
        raise ImageReadError(
            f"{path}: cannot decode the image ({error}); expected a complete PNG, JPEG or TIFF file"
        ) from None


def to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """Scale integer or float pixel values to uint8 (16-bit images are divided by 257, not clipped)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) > 255 else 255
        return np.round(array.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if array.min(initial=0) < 0 or array.max(initial=0) > 1:
            raise ImageReadError(f"{path}: float image with values outside [0, 1]; expected uint8, uint16 or [0, 1]")
        return np.round(array * 255).astype(np.uint8)
    raise ImageReadError(f"{path}: unsupported pixel type {array.dtype}; expected 8- or 16-bit integers")


def read_rgb(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """Read an RGB image as ``uint8 HxWx3``; grayscale is replicated, alpha dropped, 16-bit scaled to 8-bit."""
    path = Path(path)
    array = _decode(path, data)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar TIFF (CxHxW)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 2:  # grayscale + alpha
        array = np.repeat(array[..., :1], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ImageReadError(f"{path}: image of shape {array.shape}; expected HxW, HxWx3 or HxWx4")
    return np.ascontiguousarray(to_uint8(array, path))


def mask_to_instances(array: np.ndarray, path: str | Path = "<mask>") -> np.ndarray:
    """Turn a mask array into ``int32 HxW`` instance labels.

    Binary masks ({0,1}, {0,255} or bool) get one label per connected component (8-connectivity);
    masks with more values are taken as instance labels and renumbered 1..N; colour masks get one label per colour.
    """
    if array.ndim == 3:
        if array.shape[-1] == 4:
            array = array[..., :3]
        if array.shape[-1] == 1 or np.all(array == array[..., :1]):
            array = array[..., 0]
        else:  # colour-coded instances: one label per distinct colour, black is background
            colours, inverse = np.unique(array.reshape(-1, array.shape[-1]), axis=0, return_inverse=True)
            labels = inverse.reshape(array.shape[:2]).astype(np.int64)
            background = np.flatnonzero((colours == 0).all(axis=1))
            labels = labels + 1
            if background.size:
                labels[labels == background[0] + 1] = 0
            array = labels
    if array.ndim != 2:
        raise ImageReadError(f"{path}: mask of shape {array.shape}; expected HxW")
    values = np.unique(array)
    if values.size <= 2 and set(values.tolist()) <= {0, 1, 255} or array.dtype == bool:
        return connected_components(array > 0, connectivity=2).astype(np.int32)
    if array.min() < 0:
        raise ImageReadError(f"{path}: mask has negative values; expected 0 for background and positive labels")
    relabelled, _, _ = relabel_sequential(array.astype(np.int64))
    return relabelled.astype(np.int32)


def read_mask(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """Read a mask file as ``int32 HxW`` instance labels (see :func:`mask_to_instances`)."""
    path = Path(path)
    return mask_to_instances(_decode(path, data), path)
