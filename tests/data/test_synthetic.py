import numpy as np
from scipy import ndimage

from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile


def test_tiles_are_reproducible_and_he_coloured():
    spec = SyntheticSpec(96, 96, n_nuclei=15)
    image, mask = synthetic_tile(spec, 3)
    again, mask_again = synthetic_tile(spec, 3)
    assert np.array_equal(image, again) and np.array_equal(mask, mask_again)
    stroma = image[mask == 0].mean(axis=0)
    nuclei = image[mask > 0].mean(axis=0)
    assert stroma[0] > stroma[1] and nuclei[2] > nuclei[1]  # pink stroma, purple nuclei
    assert nuclei.mean() < stroma.mean() - 40


def test_instance_masks_are_exact_with_touching_nuclei():
    spec = SyntheticSpec(128, 128, n_nuclei=25, touching_fraction=0.8)
    _, mask = synthetic_tile(spec, 7)
    labels = np.unique(mask[mask > 0])
    assert np.array_equal(labels, np.arange(1, labels.size + 1))
    components = ndimage.label(mask > 0)[1]
    assert components < labels.size  # some nuclei touch: connected components merge them


def test_data_synthetic_writes_pairs_that_evaluate_reads_and_never_overwrites(tmp_path, capsys):
    from nucleiseg.cli import main as cli
    from nucleiseg.data.image_io import read_mask, read_rgb
    from nucleiseg.evaluation.evaluate import folder_pairs

    assert cli(["data", "synthetic", "--to", str(tmp_path), "--count", "3", "--size", "64"]) == 0
    pairs = folder_pairs(tmp_path / "images", tmp_path / "masks")
    assert [image.stem for image, _ in pairs] == ["synthetic_00", "synthetic_01", "synthetic_02"]
    image, labels = read_rgb(pairs[0][0]), read_mask(pairs[0][1])
    expected_image, expected_labels = synthetic_tile(SyntheticSpec(64, 64, n_nuclei=3), 0)
    assert np.array_equal(image, expected_image) and len(np.unique(labels)) == len(np.unique(expected_labels))
    before = (tmp_path / "images" / "synthetic_00.png").read_bytes()
    assert cli(["data", "synthetic", "--to", str(tmp_path), "--count", "1", "--seed", "5"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "images" / "synthetic_00.png").read_bytes() == before
