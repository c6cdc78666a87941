"""A damaged JPEG stream is an error, not a grey picture.

libjpeg recovers from a damaged stream (garbage mid-stream, a marker where data should be, a stream cut short
inside its length): it *warns* and fills what it could not decode with grey, and Pillow and imagecodecs (what
tifffile and tiffslide decode JPEG tiles with) swallow the warning. A slide or tile with a flat grey lower half would
then be predicted as if it were tissue-free glass, and counted. simplejpeg (libjpeg-turbo) can turn those warnings
into errors (``strict=True``): every JPEG stream nucleiseg decodes is checked with it first, whole files
(``.jpg``) and the JPEG tiles of TIFFs and slides alike. Our own code because no decoder we use exposes libjpeg's
warnings; the check itself is libjpeg-turbo's.
"""

from __future__ import annotations

import logging
import threading
import types
from typing import Any

from nucleiseg.util.errors import ImageReadError

log = logging.getLogger(__name__)
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
# libjpeg's recoverable-corruption warnings (jerror.h, JWRN_*): the ones that mean lost image data
DAMAGE = (
    "corrupt jpeg data",
    "premature end",
    "invalid sos parameters",
    "inconsistent progression",
    "bad huffman",
    "huffman table",
    "found marker",
    "extraneous bytes",
)
# colour spaces simplejpeg can decode into, by what the stream's header says it holds
_OUTPUT = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}


class DamagedJPEGError(ImageReadError):
    """A JPEG stream libjpeg could only decode in part."""


def damage(stream: bytes) -> str | None:
    """libjpeg's warning for a damaged JPEG ``stream``, or None when it decodes cleanly (or is a kind of JPEG
    simplejpeg does not decode, such as 12-bit or lossless: the main decoder judges those)."""
    import simplejpeg

    try:
        colourspace = simplejpeg.decode_jpeg_header(stream)[2]
        simplejpeg.decode_jpeg(stream, colorspace=_OUTPUT.get(colourspace, "RGB"), strict=True)
    except ValueError as error:
        message = str(error)
        if any(sign in message.lower() for sign in DAMAGE):
            return message
        log.debug("JPEG check skipped (%s)", message)
    return None


def check_jpeg(stream: bytes, where: str) -> None:
    """Raise :class:`DamagedJPEGError` naming ``where`` when the JPEG ``stream`` is damaged."""
    problem = damage(stream)
    if problem:
        raise DamagedJPEGError(
            f"{where}: damaged JPEG data ({problem}); the decoder would fill the rest with grey. Copy or export the "
            "file again"
        )


def with_tables(tile: bytes, tables: bytes | None) -> bytes:
    """A TIFF's JPEG tile as a whole stream: the shared ``JPEGTables`` (quantisation and Huffman tables) spliced
    in before the tile's own markers, as libjpeg reads them in two steps (abbreviated JPEG)."""
    if not tables or not tile.startswith(SOI):
        return tile
    head = tables[:-2] if tables.endswith(EOI) else tables
    return head + tile[2:]


_INSTALLED = threading.Lock()
_installed = False


def check_tiff_tiles() -> None:
    """Make tifffile (and tiffslide, which reads through it) check every JPEG tile or strip it decodes, once per
    process. tifffile has no hook for this and calls ``imagecodecs.jpeg_decode`` through its module's own
    ``imagecodecs`` name: that name is given a stand-in that checks, then decodes with imagecodecs as before, so
    nothing else in the process is touched. If a future tifffile stops using that name, the check is skipped with a
    warning rather than breaking reading."""
    global _installed
    with _INSTALLED:
        if _installed:
            return
        _installed = True
        import tifffile.tifffile as tiff_module

        codecs = getattr(tiff_module, "imagecodecs", None)
        if codecs is None or not hasattr(codecs, "jpeg_decode"):
            log.warning("this tifffile version cannot be told to check JPEG tiles; damaged tiles may read as grey")
            return
        if isinstance(codecs, _CheckedCodecs):
            return
        tiff_module.imagecodecs = _CheckedCodecs(codecs)


class _CheckedCodecs(types.ModuleType):
    """imagecodecs as tifffile sees it: ``jpeg_decode`` checks the stream first; everything else is imagecodecs."""

    def __init__(self, codecs: types.ModuleType) -> None:
        super().__init__(codecs.__name__, codecs.__doc__)
        self._codecs = codecs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codecs, name)

    def jpeg_decode(self, data: bytes, *args: Any, tables: bytes | None = None, **kwargs: Any) -> Any:
        if data and kwargs.get("header") is None:
            problem = damage(with_tables(bytes(data), tables))
            if problem:
                raise DamagedJPEGError(f"damaged JPEG tile ({problem})")
        return self._codecs.jpeg_decode(data, *args, tables=tables, **kwargs)
