"""Open a slide (SVS, NDPI, pyramidal or plain TIFF, and what OpenSlide reads) and read it window by window.

tiffslide reads every TIFF-based format (Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF, generic tiled or
stripped TIFF, OME-TIFF) in pure Python over tifffile, so it installs everywhere without a system library and
reads a window without decoding the rest. Formats that are not TIFF (MIRAX ``.mrxs``, Hamamatsu ``.vms``,
DICOM, ...) go through OpenSlide when its PyPI build is installed (``pip install 'nucleiseg[openslide]'``,
LGPL). PNG and JPEG cannot be read in windows: they are decoded whole, within the decoder's size limit.

Every reader returns ``uint8 HxWx3`` windows; regions outside the slide are white (background), never black,
which a nucleus model would take for stain.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.util.errors import ImageReadError

TIFF_FAMILY = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".qptiff", ".btf")
OPENSLIDE_ONLY = (".mrxs", ".vms", ".vmu", ".svslide", ".czi", ".dcm")
SLIDE_SUFFIXES = TIFF_FAMILY + OPENSLIDE_ONLY
# above this many pixels an image goes through the windowed path (tissue detection, bounded memory)
SLIDE_MIN_PIXELS = 4096 * 4096


log = logging.getLogger(__name__)
_READ_LOCK = threading.Lock()


class SlideError(ImageReadError):
    """A slide cannot be opened or read; the message names the file."""


@dataclass
class Slide:
    """A slide's geometry and a reader of its windows (subclasses read; this class pads and converts)."""

    path: Path
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level, level 0 the largest
    level_downsamples: tuple[float, ...]
    mpp: float | None  # micrometres per level-0 pixel, from the file (or the user)
    format: str

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def best_level(self, downsample: float) -> int:
        """The level with the largest downsample not above ``downsample`` (read it, then shrink the rest)."""
        candidates = [k for k, d in enumerate(self.level_downsamples) if d <= downsample * 1.001]
        return max(candidates, key=lambda k: self.level_downsamples[k]) if candidates else 0

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Window of ``width`` x ``height`` pixels of ``level`` at level coordinates ``(x, y)``; outside: white."""
        out = np.full((height, width, 3), 255, np.uint8)
        level_width, level_height = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, level_width), min(y + height, level_height)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            with _READ_LOCK:  # windows are read from worker threads; slide readers keep one file handle
                region = self._read(level, x0, y0, x1 - x0, y1 - y0)
        except (OSError, ValueError, IndexError, KeyError, RuntimeError) as error:
            raise SlideError(
                f"{self.path}: cannot read level {level} at ({x0}, {y0}) ({type(error).__name__}: {error}); "
                "the file may be truncated or damaged"
            ) from None
        out[y0 - y : y1 - y, x0 - x : x1 - x] = region
        return out

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        raise NotImplementedError

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """A low-resolution RGB view of the whole slide and its downsample from level 0, in bounded memory: the
        smallest level at least ``max_side`` wide read whole when small enough, else shrunk block by block."""
        from nucleiseg.data.transforms import resize_image

        width, height = self.dimensions
        factor = max(1.0, max(width, height) / max_side)
        level = self.best_level(factor)
        level_width, level_height = self.level_dimensions[level]
        target = max(1, round(width / factor)), max(1, round(height / factor))
        shrink = target[0] / level_width
        if level_width * level_height > 64 * target[0] * target[1]:
            log.info(
                "%s: no level near %d px: the thumbnail is made from level %d (%dx%d px), read whole; this takes a "
                "while (a pyramidal TIFF has small levels for this)",
                self.path.name,
                max_side,
                level,
                level_width,
                level_height,
            )
        block = 4096
        thumb = np.full((target[1], target[0], 3), 255, np.uint8)
        for top in range(0, level_height, block):
            for left in range(0, level_width, block):
                tile = self.read(level, left, top, min(block, level_width - left), min(block, level_height - top))
                out_top, out_left = round(top * shrink), round(left * shrink)
                out_h = max(1, min(target[1], round((top + tile.shape[0]) * shrink)) - out_top)
                out_w = max(1, min(target[0], round((left + tile.shape[1]) * shrink)) - out_left)
                if out_top >= target[1] or out_left >= target[0]:
                    continue
                thumb[out_top : out_top + out_h, out_left : out_left + out_w] = resize_image(tile, out_h, out_w)
        return thumb, width / target[0]

    def close(self) -> None:
        pass


class TiffSlideSource(Slide):
    def __init__(self, path: Path, handle: Any, mpp: float | None) -> None:
        self.handle = handle
        vendor = handle.properties.get("tiffslide.vendor") or "tiff"
        super().__init__(path, tuple(handle.level_dimensions), tuple(handle.level_downsamples), mpp, str(vendor))
        self.bits = self._bit_depth()

    def _bit_depth(self) -> int | None:
        """For a slide of more than 8 bits per sample: the depth every window is scaled from, decided once for the
        slide (the file's SMaxSampleValue, else the largest value of its smallest level), so a dim window is not
        scaled up on its own (a 12-bit slide had one window 4x brighter than the next). None for 8-bit slides."""
        level = len(self.level_dimensions) - 1
        width, height = self.level_dimensions[level]
        page = self.handle.ts_tifffile.series[0].levels[level].keyframe
        if page.dtype == np.uint8 or not np.issubdtype(page.dtype, np.integer):
            return None
        declared = page.tags.get(281)  # SMaxSampleValue
        if declared is not None:
            largest = int(np.max(declared.value))
        elif width * height <= 2**24:
            largest = int(np.asarray(self.handle.read_region((0, 0), level, (width, height), as_array=True)).max())
        else:
            largest = int(np.iinfo(page.dtype).max)
        from nucleiseg.data.image_io import bit_depth

        bits = bit_depth(largest) or 16
        log.info(
            "%s: %d-bit samples (largest %d): every window scaled from %d bits to 8", self.path, bits, largest, bits
        )
        return bits

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (round(x * downsample), round(y * downsample))  # tiffslide takes level-0 coordinates
        region = np.asarray(self.handle.read_region(location, level, (width, height), as_array=True))
        return _rgb(region, self.bits)

    def close(self) -> None:
        self.handle.close()


class OpenSlideSource(Slide):
    def __init__(self, path: Path, handle: Any, mpp: float | None) -> None:
        self.handle = handle
        vendor = handle.properties.get("openslide.vendor", "openslide")
        super().__init__(path, tuple(handle.level_dimensions), tuple(handle.level_downsamples), mpp, vendor)

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (round(x * downsample), round(y * downsample))
        rgba = np.asarray(self.handle.read_region(location, level, (width, height)))
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255  # OpenSlide's transparent background is slide background: white
        return rgb

    def close(self) -> None:
        self.handle.close()


class ArraySlide(Slide):
    """An image decoded whole (PNG, JPEG), read through the same windows."""

    def __init__(self, path: Path, image: np.ndarray, mpp: float | None) -> None:
        self.image = image
        height, width = image.shape[:2]
        super().__init__(path, ((width, height),), (1.0,), mpp, "image")

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self.image[y : y + height, x : x + width]


def _rgb(region: np.ndarray, bits: int | None = None) -> np.ndarray:
    if region.ndim == 2:
        region = region[..., None]
    if region.shape[-1] == 1:
        region = np.repeat(region, 3, axis=-1)
    if region.shape[-1] == 4:
        region = region[..., :3]
    if region.dtype != np.uint8:
        from nucleiseg.data.image_io import to_uint8

        region = to_uint8(region, Path("slide region"), bits)
    return region


def _positive(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 and np.isfinite(value) else None


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open ``path`` for windowed reading; ``mpp`` (micrometres per level-0 pixel) replaces the file's own."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in OPENSLIDE_ONLY:
        return _open_with_openslide(path, mpp)
    if suffix in TIFF_FAMILY:
        import tiffslide

        from nucleiseg.data.jpeg_check import check_tiff_tiles

        check_tiff_tiles()  # a damaged JPEG tile is an error for this slide, not a grey window

        try:
            handle = tiffslide.TiffSlide(path)
            handle.level_dimensions  # noqa: B018 - parses the pyramid now, so a broken file fails here
        except Exception as error:  # noqa: BLE001 - tifffile raises many types for damaged or foreign files
            raise SlideError(
                f"{path}: not a readable slide ({type(error).__name__}: {str(error)[:160]}); expected a TIFF-based "
                f"slide ({', '.join(TIFF_FAMILY)}) that is complete"
            ) from None
        return TiffSlideSource(path, handle, mpp or _positive(handle.properties.get("tiffslide.mpp-x")))
    from nucleiseg.data.image_io import IMAGE_SUFFIXES, read_rgb

    if suffix not in IMAGE_SUFFIXES:
        raise SlideError(
            f"{path}: unsupported format {suffix!r}; expected one of {', '.join(SLIDE_SUFFIXES + IMAGE_SUFFIXES)}"
        )
    return ArraySlide(path, read_rgb(path), mpp)


def _open_with_openslide(path: Path, mpp: float | None) -> Slide:
    try:
        import openslide
    except ImportError:
        raise SlideError(
            f"{path}: {path.suffix} slides are read with OpenSlide, which is not installed; "
            "pip install 'nucleiseg[openslide]' (the openslide-python and openslide-bin wheels)"
        ) from None
    try:
        handle = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as error:
        raise SlideError(f"{path}: OpenSlide cannot read it ({error})") from None
    return OpenSlideSource(path, handle, mpp or _positive(handle.properties.get(openslide.PROPERTY_NAME_MPP_X)))


def is_slide(path: Path, min_pixels: int = SLIDE_MIN_PIXELS) -> bool:
    """Whether an input goes through the windowed path: a slide format, a TIFF with several levels or more than
    ``min_pixels``, or a PNG/JPEG that large."""
    suffix = path.suffix.lower()
    if suffix in OPENSLIDE_ONLY or suffix in (".svs", ".ndpi", ".scn", ".bif", ".qptiff", ".btf"):
        return True
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages.first
                # a pyramid: levels of one series, or reduced-resolution pages after the first (an IFD chain)
                reduced = len(tiff.series[0].levels) > 1 or any(p.is_reduced for p in list(tiff.pages)[1:8])
                return reduced or page.imagewidth * page.imagelength > min_pixels
        from PIL import Image

        with Image.open(path) as image:  # reads the header only
            return image.width * image.height > min_pixels
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the reader that tries it next
        return False
