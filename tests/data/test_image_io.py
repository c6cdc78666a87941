import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleiseg.data.image_io import mask_to_instances, read_mask, read_rgb
from nucleiseg.errors import ImageReadError


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
