import numpy as np
import pytest
from scipy.io import savemat

from nucleiseg.data.typed.consep import CONSEP_CLASSES, consep_labels, find_consep
from nucleiseg.util.errors import DatasetLayoutError, ImageReadError
from tests.data.typed.formats import write_consep


def test_reads_both_splits_and_merges_the_seven_types_as_hovernet(tmp_path):
    expected = write_consep(tmp_path / "CoNSeP")
    sources = find_consep(tmp_path)
    assert [(s.name, s.metadata["split"]) for s in sources] == [("train_1", "train"), ("test_1", "test")]
    assert CONSEP_CLASSES == ("other", "inflammatory", "epithelial", "spindle-shaped")
    train = sources[0]
    assert train.microns_per_pixel == 0.25 and train.classes == CONSEP_CLASSES
    image, instances, types = train.load_typed()
    assert image.shape == (64, 64, 3) and instances.dtype == np.int32 and instances.max() == 7
    # types 1..7 -> 1, 2, 3, 3, 4, 4, 4 (vqdang/hover_net dataset.py)
    assert [int(types[instances == k][0]) for k in range(1, 8)] == expected["train_1"] == [1, 2, 3, 3, 4, 4, 4]


def test_without_inst_type_the_type_map_decides(tmp_path):
    inst_map = np.zeros((10, 10))
    inst_map[0:4, 0:4], inst_map[5:9, 5:9] = 1, 2
    type_map = np.where(inst_map == 1, 5, np.where(inst_map == 2, 2, 0)).astype(float)
    type_map[0, 0] = 2  # one stray pixel: the majority decides
    savemat(tmp_path / "a.mat", {"inst_map": inst_map, "type_map": type_map})
    instances, types = consep_labels(tmp_path / "a.mat")
    assert types[1, 1] == 4 and types[0, 0] == 4 and types[6, 6] == 2


def test_errors_name_the_file_and_the_layout(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no Train/Images or Test/Images folder found"):
        find_consep(tmp_path)
    write_consep(tmp_path)
    (tmp_path / "Test" / "Labels" / "test_1.mat").unlink()
    with pytest.raises(DatasetLayoutError, match=r"test_1.png: no labels .*test_1.mat"):
        find_consep(tmp_path)
    savemat(tmp_path / "bad.mat", {"inst_map": np.zeros((4, 4))})
    with pytest.raises(DatasetLayoutError, match=r"bad.mat: no type_map in the .mat file \(found \['inst_map'\]\)"):
        consep_labels(tmp_path / "bad.mat")
    savemat(tmp_path / "frac.mat", {"inst_map": np.full((4, 4), 0.5), "type_map": np.zeros((4, 4))})
    with pytest.raises(ImageReadError, match="frac.mat: inst_map holds non-integer values"):
        consep_labels(tmp_path / "frac.mat")
