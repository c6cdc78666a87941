"""A damaged JPEG stream (garbage or a stray marker mid-stream, its length intact) is an error naming the file,
whether it is a ``.jpg``, a JPEG-compressed TIFF or a JPEG tile of a slide: libjpeg only warns and fills the rest
with grey, and that grey was predicted and counted."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleiseg.data.image_io import read_rgb
from nucleiseg.data.jpeg_check import DamagedJPEGError, damage
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile


def _tile(size: int = 256) -> np.ndarray:
    return synthetic_tile(SyntheticSpec(size, size, n_nuclei=20), 0)[0]


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _damaged(stream: bytes, how: str) -> bytes:
    data = bytearray(stream)
    middle = len(data) // 2
    if how == "marker":
        data[middle : middle + 2] = b"\xff\xd9"  # an end-of-image marker mid-stream
    else:
        data[middle : middle + 400] = bytes(400)  # zeros: no marker at all, the length unchanged
    return bytes(data)


@pytest.mark.parametrize("how", ["marker", "zeros"])
def test_pillow_decodes_a_damaged_jpeg_silently_and_we_refuse_it(tmp_path, how):
    image = _tile()
    path = tmp_path / "tile.jpg"
    path.write_bytes(_damaged(_jpeg(image), how))
    with Image.open(path) as opened:  # what happened before: a picture, no error, part of it grey
        opened.load()
        decoded = np.asarray(opened)
    assert decoded.shape == image.shape
    with pytest.raises(DamagedJPEGError, match=r"tile\.jpg: damaged JPEG data \(Corrupt JPEG data"):
        read_rgb(path)


def test_an_intact_jpeg_passes_and_decodes_as_before(tmp_path):
    path = tmp_path / "tile.jpeg"
    path.write_bytes(_jpeg(_tile()))
    assert damage(path.read_bytes()) is None
    with Image.open(path) as opened:
        assert np.array_equal(read_rgb(path), np.asarray(opened.convert("RGB")))


def _jpeg_tiff(path, image, tile=None):
    tifffile.imwrite(path, image, photometric="rgb", compression="jpeg", tile=tile)
    return path


def _damage_tiff_segment(path, index=1):
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages.first
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    data = bytearray(path.read_bytes())
    data[offset + count // 2 : offset + count // 2 + 2] = b"\xff\xd9"
    path.write_bytes(bytes(data))


def test_a_jpeg_compressed_tiff_with_a_damaged_tile_is_refused_naming_the_tile(tmp_path):
    path = _jpeg_tiff(tmp_path / "image.tif", _tile(256), tile=(128, 128))
    assert read_rgb(path).shape == (256, 256, 3)
    _damage_tiff_segment(path, index=1)
    with pytest.raises(DamagedJPEGError, match=r"image\.tif \(tile 1\): damaged JPEG data"):
        read_rgb(path)


def test_a_slide_with_a_damaged_jpeg_tile_fails_alone_and_the_batch_goes_on(tmp_path):
    from nucleiseg.cli import main as cli
    from nucleiseg.data.synthetic_slide import synthetic_pool, tissue_content, write_slide
    from nucleiseg.predict.slides.reader import SlideError, open_slide

    folder = tmp_path / "in"
    folder.mkdir()
    content = tissue_content(synthetic_pool(128, 2), [(0, 0, 1024, 1024)])
    good = write_slide(folder / "good.tif", 1024, 1024, content, mpp=0.5, tile=256, compression="jpeg", min_side=256)
    bad = write_slide(folder / "bad.tif", 1024, 1024, content, mpp=0.5, tile=256, compression="jpeg", min_side=256)
    _damage_tiff_segment(bad, index=5)
    slide = open_slide(bad)
    try:
        with pytest.raises(SlideError, match=r"bad\.tif: cannot read level 0 .*damaged JPEG tile"):
            slide.read(0, 256, 256, 256, 256)
        assert slide.read(0, 0, 0, 256, 256).std() > 0  # the intact tiles still read
    finally:
        slide.close()
    assert open_slide(good).read(0, 256, 256, 256, 256).std() > 0
    code = cli(["predict", str(folder), "--out", str(tmp_path / "out"), "--quiet", "predict.tile_size=256"])
    assert code == 1
    assert (tmp_path / "out" / "good" / "done.json").is_file() and not (tmp_path / "out" / "bad" / "done.json").exists()
