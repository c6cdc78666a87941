import numpy as np
import pytest
from scipy.io import savemat

from nucleiseg.data.typed.conic import find_conic
from nucleiseg.data.typed.lizard import LIZARD_CLASSES, find_lizard, lizard_labels
from nucleiseg.util.errors import DatasetLayoutError, ImageReadError
from tests.data.typed.formats import CONIC_PATCHES, LIZARD_IMAGES, write_conic, write_lizard


def test_lizard_reads_both_image_folders_with_classes_by_nucleus_id(tmp_path):
    write_lizard(tmp_path / "lizard")
    sources = find_lizard(tmp_path)
    assert [s.name for s in sources] == ["consep_1", "crag_2"]
    assert LIZARD_CLASSES == ("neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective")
    assert sources[0].microns_per_pixel == 0.5
    assert dict(sources[1].metadata) == {"source": "crag", "split": "2", "tissue": "colon"}
    for source in sources:
        _, instances, types = source.load_typed()
        nuclei = sorted(LIZARD_IMAGES[source.name])  # ids 3, 7, 9 become labels 1, 2, 3 in id order
        assert instances.max() == len(nuclei)
        assert [int(types[instances == k][0]) for k in range(1, len(nuclei) + 1)] == [n[1] for n in nuclei]


def test_lizard_nucleus_without_a_class_entry_is_named(tmp_path):
    inst_map = np.zeros((8, 8), np.int32)
    inst_map[:2, :2], inst_map[4:, 4:] = 1, 2
    savemat(tmp_path / "x.mat", {"inst_map": inst_map, "id": np.array([[1]]), "class": np.array([[2]])})
    with pytest.raises(ImageReadError, match=r"x.mat: 1 nuclei of inst_map \(e.g. 2\) have no id/class entry"):
        lizard_labels(tmp_path / "x.mat")
    savemat(tmp_path / "y.mat", {"inst_map": inst_map, "nuclei_id": np.array([[1], [2]]), "class": [[2], [9]]})
    with pytest.raises(ImageReadError, match=r"y.mat: classes \[9\]; expected 1..6"):
        lizard_labels(tmp_path / "y.mat")


def test_lizard_layout_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no Lizard_Images\\* folder found; expected the Lizard release"):
        find_lizard(tmp_path)


def test_conic_patches_grouped_by_their_lizard_image(tmp_path):
    write_conic(tmp_path / "data")
    sources = find_conic(tmp_path)
    assert [(s.name, s.patient) for s in sources] == [
        ("consep_1-0000", "consep_1"),
        ("consep_1-0001", "consep_1"),
        ("crag_2-0000", "crag_2"),
    ]
    assert sources[0].classes == LIZARD_CLASSES and sources[0].metadata["tissue"] == "colon"
    for source, (_, nuclei) in zip(sources, CONIC_PATCHES, strict=True):
        image, instances, types = source.load_typed()
        assert image.dtype == np.uint8 and image.shape == (256, 256, 3)
        assert instances.max() == len(nuclei)
        assert [int(types[instances == k][0]) for k in range(1, len(nuclei) + 1)] == [n[1] for n in sorted(nuclei)]


def test_conic_without_patch_info_is_refused(tmp_path):
    write_conic(tmp_path)
    (tmp_path / "patch_info.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="patch_info.csv: patch_info.csv missing"):
        find_conic(tmp_path)
