import numpy as np
import pytest

from nucleiseg.data.typed.common import memory_mapped
from nucleiseg.data.typed.pannuke import (
    PANNUKE_CLASSES,
    PANNUKE_FOLD_PROTOCOL,
    find_pannuke,
    pannuke_labels,
    pannuke_protocol_split,
)
from nucleiseg.util.errors import DatasetLayoutError
from tests.data.typed.formats import PANNUKE_NUCLEI, pannuke_expected_classes, write_pannuke


@pytest.fixture(scope="module")
def pannuke_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pannuke")
    write_pannuke(root)
    return root


def test_reads_every_fold_with_classes_pixel_size_and_tissue(pannuke_root):
    sources = find_pannuke(pannuke_root)
    assert [s.name for s in sources] == ["fold1_0000", "fold1_0001", "fold2_0000", "fold2_0001", "fold3_0000"]
    first = sources[0]
    assert first.classes == PANNUKE_CLASSES == ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
    assert first.microns_per_pixel == 0.25 and first.patient == "fold1"
    assert dict(first.metadata) == {"fold": "1", "tissue": "Breast"} and sources[1].metadata["tissue"] == "Colon"
    image, instances, types = first.load_typed()
    assert image.dtype == np.uint8 and image.shape == (256, 256, 3) and tuple(image[0, 0]) == (230, 180, 210)
    assert instances.dtype == np.int32 and types.dtype == np.int32 and instances.shape == (256, 256)
    # channel 0 ids 1 and 2, channel 1 id 5, channel 4 id 1 again: four nuclei, the repeated id kept apart
    assert instances.max() == 4
    assert [int(types[instances == k][0]) for k in range(1, 5)] == pannuke_expected_classes(1, 0) == [1, 1, 2, 5]
    assert np.count_nonzero(instances == 4) == 81 and np.all(types[instances == 0] == 0)
    assert np.array_equal(first.load()[1], instances)


def test_arrays_are_memory_mapped_not_read_whole(pannuke_root):
    sources = find_pannuke(pannuke_root, folds=[2])
    assert {s.metadata["fold"] for s in sources} == {"2"}
    assert isinstance(memory_mapped(str(sources[0].annotation_path)), np.memmap)
    _, instances, types = sources[1].load_typed()  # a patch without nuclei
    assert instances.max() == 0 and types.max() == 0


def test_fold_protocol_as_data(pannuke_root):
    assert PANNUKE_FOLD_PROTOCOL[0] == {"train": 1, "val": 2, "test": 3}
    for rotation in PANNUKE_FOLD_PROTOCOL:
        assert sorted(rotation.values()) == [1, 2, 3]
    assert {r["test"] for r in PANNUKE_FOLD_PROTOCOL} == {1, 3}
    split = pannuke_protocol_split(find_pannuke(pannuke_root), 1)
    assert {k: [s.name for s in v] for k, v in split.items()} == {
        "train": ["fold2_0000", "fold2_0001"],
        "val": ["fold1_0000", "fold1_0001"],
        "test": ["fold3_0000"],
    }
    with pytest.raises(ValueError, match="rotation 3"):
        pannuke_protocol_split([], 3)


def test_overlapping_channels_later_channel_wins():
    mask = np.zeros((8, 8, 6))
    mask[0:4, 0:4, 0] = 3
    mask[2:6, 2:6, 2] = 3
    instances, types = pannuke_labels(mask)
    assert types[3, 3] == 3 and types[0, 0] == 1 and instances.max() == 2


def test_layout_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no PanNuke fold found; expected the PanNuke release"):
        find_pannuke(tmp_path)
    write_pannuke(tmp_path, {1: PANNUKE_NUCLEI[1]})
    with pytest.raises(DatasetLayoutError, match=r"fold\(s\) \[2\] not found \(found \[1\]\)"):
        find_pannuke(tmp_path, folds=[1, 2])
    (tmp_path / "Fold 1" / "masks" / "fold1" / "masks.npy").unlink()
    with pytest.raises(DatasetLayoutError, match=r"images.npy: its masks .*masks.npy are missing"):
        find_pannuke(tmp_path)


def test_mismatched_arrays_are_refused(tmp_path):
    write_pannuke(tmp_path, {1: PANNUKE_NUCLEI[1]})
    np.save(tmp_path / "Fold 1" / "masks" / "fold1" / "masks.npy", np.zeros((2, 256, 256, 5)))
    with pytest.raises(DatasetLayoutError, match=r"masks.npy: array of shape \(2, 256, 256, 5\); expected"):
        find_pannuke(tmp_path)


def test_pickled_tissue_types_are_not_unpickled(tmp_path, caplog):
    write_pannuke(tmp_path, {1: PANNUKE_NUCLEI[1]})
    np.save(tmp_path / "Fold 1" / "images" / "fold1" / "types.npy", np.array(["Breast", None], dtype=object))
    sources = find_pannuke(tmp_path)
    assert [s.metadata["tissue"] for s in sources] == ["", ""] and "not loaded (unsafe)" in caplog.text
    assert sources[0].load_typed()[1].max() == 4
