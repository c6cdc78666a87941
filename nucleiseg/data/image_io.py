"""Decode images and masks from disk into the project's array conventions.

Images leave this module as ``uint8 HxWx3`` RGB; masks as ``int32 HxW`` instance labels (0 = background).
Every reader in the project goes through these two functions, so grayscale, RGBA, 16-bit and binary/instance
mask conventions are handled in one place.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential

from nucleiseg.util.errors import ImageReadError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
# every image file the project reads (images and masks), the one list the readers, evaluate and predict share
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


# Images decoded whole (not through the slide reader's windows) stay within Pillow's own bomb limit: twice
# Image.MAX_IMAGE_PIXELS (about 179 megapixels, 540 MB of RGB). Larger images are slides: nucleiseg.predict.slides.
MAX_WHOLE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS


class _NeedsTifffile(Exception):
    """A TIFF Pillow opens but would decode wrongly (more than 8 bits per colour sample)."""


class TooLargeError(ImageReadError):
    """An image is too large to decode whole (or claims to be: a decompression bomb)."""


def _too_large(path: Path, width: int, height: int) -> TooLargeError:
    return TooLargeError(
        f"{path}: {width}x{height} pixels is beyond what is decoded whole ({MAX_WHOLE_PIXELS / 1e6:.0f} MP); "
        "save it as a tiled (pyramidal) TIFF, which is read window by window (e.g. vips tiffsave IN OUT.tif "
        "--tile --pyramid --compression jpeg)"
    )


def _decode_with_pillow(source: Path | io.BytesIO, path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened = Image.open(source)
        except Image.DecompressionBombError as error:  # Pillow refuses at open past twice its limit
            raise TooLargeError(f"{path}: {error}; save it as a tiled (pyramidal) TIFF to read it in windows") from None
    with opened as image:
        if image.width * image.height > MAX_WHOLE_PIXELS:
            raise _too_large(path, image.width, image.height)
        if image.format == "TIFF" and image.mode in ("RGB", "RGBA") and max(image.tag_v2.get(258, (8,))) > 8:
            raise _NeedsTifffile  # Pillow keeps only the high byte of 16-bit colour samples: 12-bit goes dark
        with warnings.catch_warnings():  # within our limit on purpose: no "decompression bomb" warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()  # forces a full decode, so a truncated file fails here and not later
        if image.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(image, dtype=np.uint16)
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode == "CMYK":  # print colour spaces: four channels that are not RGB + alpha
            log.warning("%s: CMYK image converted to RGB (colours may shift; H&E is best saved as RGB)", path)
            image = image.convert("RGB")
        return np.asarray(image)


def _decode_with_tifffile(source: Path | io.BytesIO, path: Path) -> np.ndarray:
    """TIFF flavours Pillow cannot decode; the size the file declares is checked before anything is decoded (a
    few kilobytes can declare gigabytes)."""
    with tifffile.TiffFile(source) as tiff:
        page = tiff.pages.first
        if page.imagewidth * page.imagelength > MAX_WHOLE_PIXELS:
            raise _too_large(path, page.imagewidth, page.imagelength)
        return np.asarray(page.asarray())


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _check_complete_tiff(source: Path | io.BytesIO, path: Path) -> None:
    """A TIFF cut short (an interrupted download or copy) is refused before decoding: decoders fill what is missing
    with grey (JPEG) or fail with codec-specific errors. Every strip or tile of the first image must lie inside
    the file, and each JPEG strip or tile must decode without libjpeg's damage warnings
    (:mod:`nucleiseg.data.jpeg_check`)."""
    from nucleiseg.data.jpeg_check import check_jpeg, with_tables

    with tifffile.TiffFile(source) as tiff:
        size = tiff.filehandle.size
        page = tiff.pages.first
        kind = "tile" if page.is_tiled else "strip"
        for index, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts, strict=False)):
            if offset + count > size:
                raise ImageReadError(
                    f"{path}: truncated TIFF ({kind} {index} ends at byte {offset + count:,}, the file has "
                    f"{size:,}); download or copy it again"
                )
        if page.compression in (7, 33007):  # JPEG
            segments = tiff.filehandle.read_segments(page.dataoffsets, page.databytecounts, sort=True)
            for data, index in segments:
                if data:
                    check_jpeg(with_tables(data, page.jpegtables), f"{path} ({kind} {index})")


def _check_intact(path: Path, data: bytes | None) -> None:
    """Refuse a truncated TIFF or a damaged JPEG stream (file or TIFF tiles) before any decoder fills it in."""
    with open(path, "rb") if data is None else io.BytesIO(data) as handle:
        magic = handle.read(4)
    if magic in TIFF_MAGIC:
        _check_complete_tiff(io.BytesIO(data) if data is not None else path, path)
    elif magic.startswith(b"\xff\xd8\xff"):  # JPEG, whatever the file is called
        from nucleiseg.data.jpeg_check import check_jpeg

        check_jpeg(data if data is not None else path.read_bytes(), str(path))


def _decode(path: Path, data: bytes | None = None) -> np.ndarray:
    """Decode ``path`` (or ``data``, named by ``path``) to a NumPy array, raising ImageReadError on failure.

    Pillow reads PNG/JPEG and the common TIFFs (including the LZW ones MoNuSeg ships); tifffile takes over for
    TIFF flavours Pillow cannot decode (multi-sample 16-bit, planar, BigTIFF).
    """

    def source() -> Path | io.BytesIO:  # a fresh stream for each decoder that tries
        return io.BytesIO(data) if data is not None else path

    try:
        _check_intact(path, data)
        try:
            return _decode_with_pillow(source(), path)
        except TooLargeError:
            raise
        except _NeedsTifffile:
            return _decode_with_tifffile(source(), path)
        except (UnidentifiedImageError, OSError, ValueError) as pillow_error:
            if path.suffix.lower() not in TIFF_SUFFIXES or isinstance(pillow_error, FileNotFoundError):
                raise
            return _decode_with_tifffile(source(), path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - codecs (imagecodecs, libtiff, zlib) raise their own types
        raise ImageReadError(
            f"{path}: cannot decode the image ({type(error).__name__}: {str(error)[:160]}); expected a complete PNG, "
            "JPEG or TIFF file"
        ) from None


def bit_depth(largest: int) -> int | None:
    """The smallest common bit depth (8, 10, 12, 14, 16) that holds ``largest``; None beyond 16 bits."""
    return next((b for b in (8, 10, 12, 14, 16) if largest < 2**b), None)


def to_uint8(array: np.ndarray, path: Path, bits: int | None = None) -> np.ndarray:
    """Scale integer or float pixel values to uint8. Integer images are scaled from the smallest common bit
    depth that holds their values (10-, 12-, 14- or 16-bit: a 12-bit camera image stored in 16 bits is
    divided by 4095/255, not by 65535/255, which would leave it near-black); the log says what was done.
    ``bits``: the depth of the whole image when ``array`` is a part of it (a slide's window: each window must be
    scaled alike, not by its own largest value)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        largest = int(array.max(initial=0))
        if bits is None:
            bits = bit_depth(largest)
            if bits is not None and bits > 8:
                log.info(
                    "%s: %s image scaled from %d-bit (largest value %d) to 8-bit", path, array.dtype, bits, largest
                )
        if bits is None or array.min(initial=0) < 0:
            raise ImageReadError(f"{path}: pixel values {array.min()}..{largest}; expected 8- to 16-bit unsigned")
        scaled = np.round(array.astype(np.float64) * (255.0 / (2**bits - 1)))
        return np.clip(scaled, 0, 255).astype(np.uint8)
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


# A binary mask with a few stray values (anti-aliased edges, a touched-up pixel): the second value covers
# less than this share of the foreground. An instance mask's second label covers a whole nucleus.
STRAY_SHARE = 0.01


def _binary(foreground: np.ndarray) -> np.ndarray:
    return connected_components(foreground, connectivity=2).astype(np.int32)


def mask_to_instances(array: np.ndarray, path: str | Path = "<mask>") -> np.ndarray:
    """Turn a mask array into ``int32 HxW`` instance labels (see :func:`mask_to_instances_and_kind`)."""
    return mask_to_instances_and_kind(array, path)[0]


# Instance labels: each value one nucleus (one region, now and then two). A binary mask blurred, resized with
# interpolation or saved as JPEG has grey levels that each trace rings around many nuclei.
MAX_REGIONS_PER_VALUE = 3.0


def mask_to_instances_and_kind(array: np.ndarray, path: str | Path = "<mask>") -> tuple[np.ndarray, str]:
    """Turn a mask array into ``(int32 HxW instance labels, kind)``, ``kind`` ``binary`` or ``instances``.

    - one foreground value, whatever it is ({0,1}, {0,255}, {0,128}, bool, one colour on black): a binary mask,
      one label per connected component (8-connectivity);
    - one foreground value plus stray values on under 1% of the foreground: binary too, and the log says so;
    - otherwise instance labels (one per value, renumbered 1..N), or in colour one label per colour; refused
      when its values each cover many separate regions (a blurred, interpolated or JPEG-saved binary mask, or a
      class map): one instance per grey level would be silently wrong.
    """
    if array.ndim == 3:
        array = _collapse_channels(array)
    if array.ndim != 2:
        raise ImageReadError(f"{path}: mask of shape {array.shape}; expected HxW")
    if array.dtype == bool:
        return _binary(array), "binary"
    if array.min() < 0:
        raise ImageReadError(f"{path}: mask has negative values; expected 0 for background and positive labels")
    values, counts = np.unique(array[array > 0], return_counts=True)
    if values.size == 1 or _binary_with_strays(values, counts, path):
        return _binary(array > 0), "binary"
    _check_not_blurred(array, values.size, path)
    relabelled, _, _ = relabel_sequential(array.astype(np.int64))
    return relabelled.astype(np.int32), "instances"


def _collapse_channels(array: np.ndarray) -> np.ndarray:
    """An ``HxWxC`` mask as ``HxW``: alpha dropped; grey stored in colour (all channels alike) keeps one channel;
    colour-coded instances become one label per distinct colour, black the background (0)."""
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.shape[-1] == 1 or np.all(array == array[..., :1]):
        return array[..., 0]
    colours, inverse = np.unique(array.reshape(-1, array.shape[-1]), axis=0, return_inverse=True)
    background = np.flatnonzero((colours == 0).all(axis=1))
    labels = inverse.reshape(array.shape[:2]).astype(np.int64) + 1
    if background.size:
        labels[labels == background[0] + 1] = 0
    return labels


def _binary_with_strays(values: np.ndarray, counts: np.ndarray, path: str | Path) -> bool:
    """Whether foreground ``values`` (with pixel ``counts``) are one value plus strays on under ``STRAY_SHARE`` of
    the foreground: a binary mask, which the log says."""
    if values.size > 1 and counts.max() >= (1 - STRAY_SHARE) * counts.sum():
        log.warning(
            "%s: read as a binary mask: value %s on %.2f%% of the nucleus pixels, %d stray value(s) on the rest",
            path,
            values[counts.argmax()],
            100 * counts.max() / counts.sum(),
            values.size - 1,
        )
        return True
    return False


def _check_not_blurred(array: np.ndarray, n_values: int, path: str | Path) -> None:
    """Refuse labels whose ``n_values`` values (three or more) each trace many separate regions: a blurred,
    interpolated or JPEG-saved binary mask, or a class map, not one value per nucleus."""
    if n_values < 3:
        return
    regions = int(connected_components(array, background=0, connectivity=1).max())
    if regions > MAX_REGIONS_PER_VALUE * n_values:
        raise ImageReadError(
            f"{path}: {n_values} grey levels forming {regions} separate regions: not instance labels (one "
            "value per nucleus) but a binary mask that was blurred, resized with interpolation or saved as "
            "JPEG, or a class map; save masks losslessly (PNG/TIFF, nearest-neighbour resizing) as binary or "
            "instance labels"
        )


LOSSY_SUFFIXES = (".jpg", ".jpeg")
JPEG_MAGIC = b"\xff\xd8\xff"


def read_mask(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """Read a mask file as ``int32 HxW`` instance labels (see :func:`mask_to_instances`)."""
    return read_mask_and_kind(path, data)[0]


def read_mask_and_kind(path: str | Path, data: bytes | None = None) -> tuple[np.ndarray, str]:
    """Read a mask file as ``(int32 HxW instance labels, "binary" | "instances")``. Lossy formats are refused,
    whatever the file is named: JPEG changes label values and edges (it would invent instances and move
    outlines)."""
    path = Path(path)
    if path.suffix.lower() in LOSSY_SUFFIXES:
        raise ImageReadError(f"{path}: a JPEG mask is lossy (values and edges change); save masks as PNG or TIFF")
    try:
        with open(path, "rb") if data is None else io.BytesIO(data) as handle:
            head = handle.read(3)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    if head == JPEG_MAGIC:
        raise ImageReadError(
            f"{path}: JPEG data under a {path.suffix or 'missing'} name: a lossy mask (values and edges change); "
            "save masks as PNG or TIFF"
        )
    return mask_to_instances_and_kind(_decode(path, data), path)
