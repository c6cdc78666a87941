import numpy as np
import pytest
import tifffile

from nucleiseg.data.typed.monusac import MONUSAC_CLASSES, ambiguous_count, ambiguous_mask, find_monusac
from nucleiseg.util.errors import AnnotationError
from tests.data.typed.formats import box, monusac_xml, write_monusac


def test_reads_both_releases_per_patient_with_classes_and_svs(tmp_path):
    write_monusac(tmp_path)
    sources = find_monusac(tmp_path)
    assert [(s.name, s.patient, s.metadata["split"]) for s in sources] == [
        ("TCGA-2Z-A9JG-01Z-00-DX1_1", "TCGA-2Z-A9JG", "test"),
        ("TCGA-55-1594-01Z-00-DX1_1", "TCGA-55-1594", "train"),
        ("TCGA-55-1594-01Z-00-DX1_2", "TCGA-55-1594", "train"),
    ]
    assert MONUSAC_CLASSES == ("epithelial", "lymphocyte", "neutrophil", "macrophage")
    assert sources[0].microns_per_pixel == 0.25
    image, instances, types = sources[1].load_typed()  # RGBA .tif: alpha dropped
    assert image.shape == (48, 48, 3) and instances.max() == 4
    assert [int(types[instances == k][0]) for k in range(1, 5)] == [1, 1, 2, 4]
    image, instances, types = sources[2].load_typed()  # the .svs
    assert image.shape == (48, 48, 3) and instances.max() == 1 and types.max() == 3


def test_ambiguous_regions_are_counted_not_trained_on(tmp_path):
    write_monusac(tmp_path)
    test_image = find_monusac(tmp_path)[0]
    _, instances, types = test_image.load_typed()
    assert instances.max() == 2 and set(np.unique(types)) == {0, 2}
    assert ambiguous_count(test_image) == 1
    mask = ambiguous_mask(test_image, (48, 48))
    assert mask.dtype == bool and mask[30, 30] and not mask[5, 5] and instances[mask].max() == 0


def test_unknown_class_is_named(tmp_path):
    folder = tmp_path / "TCGA-AA-0000-01Z-00-DX1"
    folder.mkdir()
    (folder / "a.xml").write_text(monusac_xml([("Fibroblast", [box(1, 1, 4)])]))
    tifffile.imwrite(folder / "a.tif", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(AnnotationError, match=r"a.xml: annotation classes \['Fibroblast'\]; expected Epithelial"):
        find_monusac(tmp_path)[0].load_typed()
