import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleiseg.data.image_io import mask_to_instances, read_mask, read_rgb
from nucleiseg.util.errors import ImageReadError


def test_rgba_grayscale_and_16bit_are_converted_to_rgb_uint8(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((8, 9), 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    tifffile.imwrite(tmp_path / "deep.tif", rgb.astype(np.uint16) * 257)
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "gray16.png")

    assert np.array_equal(read_rgb(tmp_path / "rgba.png"), rgb)
    gray = read_rgb(tmp_path / "gray.png")
    assert gray.shape == (8, 9, 3) and np.array_equal(gray[..., 2], rgb[..., 0])
    deep = read_rgb(tmp_path / "deep.tif")
    assert deep.dtype == np.uint8 and np.array_equal(deep, rgb)
    assert np.array_equal(read_rgb(tmp_path / "gray16.png")[..., 0], rgb[..., 0])


def test_truncated_image_names_the_file(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_rgb(tmp_path / "cut.png")
    (tmp_path / "junk.tif").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="junk.tif"):
        read_rgb(tmp_path / "junk.tif")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        read_rgb(tmp_path / "nothing.png")


@pytest.mark.parametrize("foreground", [1, 255, True])
def test_binary_masks_become_connected_components(foreground):
    mask = np.zeros((10, 10), dtype=np.uint8 if foreground is not True else bool)
    mask[1:3, 1:3] = foreground
    mask[6:9, 5:8] = foreground
    labels = mask_to_instances(mask)
    assert labels.dtype == np.int32
    assert labels.max() == 2
    assert set(np.unique(labels[1:3, 1:3])) == {1} and set(np.unique(labels[6:9, 5:8])) == {2}


def test_instance_label_masks_keep_their_instances_touching_included(tmp_path):
    mask = np.zeros((10, 10), dtype=np.uint16)
    mask[2:5, 2:5] = 7
    mask[2:5, 5:8] = 9  # touches label 7: connected components would merge them
    Image.fromarray(mask).save(tmp_path / "labels.png")
    labels = read_mask(tmp_path / "labels.png")
    assert labels.max() == 2
    assert labels[3, 3] != labels[3, 6] and labels[3, 3] > 0 and labels[3, 6] > 0


def test_colour_instance_masks_get_one_label_per_colour():
    mask = np.zeros((6, 6, 3), dtype=np.uint8)
    mask[0:2, 0:2] = (255, 0, 0)
    mask[0:2, 2:4] = (0, 255, 0)
    labels = mask_to_instances(mask)
    assert labels.max() == 2 and labels[5, 5] == 0 and labels[0, 0] != labels[0, 3]


def _disc_mask(size=96, centres=((30, 30), (60, 64), (25, 70)), radius=9):
    rows, cols = np.ogrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for y, x in centres:
        mask[(rows - y) ** 2 + (cols - x) ** 2 <= radius**2] = 255
    return mask


def test_jpeg_data_under_a_png_name_is_refused_as_a_mask(tmp_path):
    Image.fromarray(_disc_mask()).save(tmp_path / "mask.png", format="JPEG", quality=90)
    with pytest.raises(ImageReadError, match=r"mask\.png: JPEG data under a \.png name"):
        read_mask(tmp_path / "mask.png")


def test_blurred_or_interpolated_binary_masks_are_refused_not_read_per_grey_level(tmp_path):
    from scipy import ndimage

    mask = _disc_mask()
    blurred = np.clip(ndimage.gaussian_filter(mask.astype(float), 1.5), 0, 255).astype(np.uint8)
    Image.fromarray(blurred).save(tmp_path / "blurred.png")
    with pytest.raises(ImageReadError, match=r"blurred\.png: \d+ grey levels forming \d+ separate regions"):
        read_mask(tmp_path / "blurred.png")
    small = Image.fromarray(mask).resize((48, 48), Image.BILINEAR).resize((96, 96), Image.BILINEAR)
    small.save(tmp_path / "resized.png")
    with pytest.raises(ImageReadError, match="resized with interpolation"):
        read_mask(tmp_path / "resized.png")
    # the same nuclei as true instance labels (one value each), or as a clean binary mask, read as they are
    labels = np.zeros_like(mask)
    for value, (y, x) in enumerate(((30, 30), (60, 64), (25, 70)), start=1):
        rows, cols = np.ogrid[:96, :96]
        labels[(rows - y) ** 2 + (cols - x) ** 2 <= 81] = value
    Image.fromarray(labels).save(tmp_path / "instances.png")
    assert read_mask(tmp_path / "instances.png").max() == 3
    Image.fromarray(mask).save(tmp_path / "binary.png")
    assert read_mask(tmp_path / "binary.png").max() == 3
