import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from nucleiseg.data.archive import dataset_folder
from nucleiseg.data.tnbc import find_tnbc
from nucleiseg.util.errors import DatasetLayoutError, ImageReadError
from tests.conftest import SHARED_DATA, requires_shared_data


def test_reads_slides_as_patients_and_masks_as_instances(tnbc_root):
    sources = find_tnbc(tnbc_root)
    assert [s.name for s in sources] == ["01_1", "01_2", "01_3", "02_1", "02_2", "03_1", "03_2"]
    assert [s.patient for s in sources] == ["slide01"] * 3 + ["slide02"] * 2 + ["slide03"] * 2
    image, mask = sources[0].load()
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert mask.dtype == np.int32 and mask.max() >= 1
    gt = np.asarray(Image.open(tnbc_root / "GT_01" / "01_1.png")) > 0
    assert np.array_equal(mask > 0, gt)


def test_finds_the_layout_one_level_down(tmp_path, tnbc_root):
    shutil.move(tnbc_root, tmp_path / "download" / "TNBC_NucleiSegmentation")
    assert len(find_tnbc(tmp_path / "download")) == 7


def test_reads_the_zip_as_downloaded(tmp_path, tnbc_root):
    archive = tmp_path / "TNBC_NucleiSegmentation.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(tnbc_root.rglob("*.png")):
            bundle.write(path, f"TNBC_NucleiSegmentation/{path.relative_to(tnbc_root)}")
    with dataset_folder(archive) as folder:
        sources = find_tnbc(folder)
        assert len(sources) == 7
        assert sources[0].load()[0].shape == (64, 64, 3)


def test_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../../escape.txt", "x")
    with pytest.raises(DatasetLayoutError, match="outside"), dataset_folder(archive):
        pass


def test_slide_without_gt_folder_is_named(tnbc_root):
    shutil.rmtree(tnbc_root / "GT_02")
    with pytest.raises(DatasetLayoutError, match="Slide_02.*GT_02"):
        find_tnbc(tnbc_root)


def test_image_without_mask_is_named(tnbc_root):
    (tnbc_root / "GT_03" / "03_2.png").unlink()
    with pytest.raises(DatasetLayoutError, match="03_2.png"):
        find_tnbc(tnbc_root)


def test_empty_or_wrong_root_lists_the_expected_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="Slide_01/01_1.png"):
        find_tnbc(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        find_tnbc(tmp_path / "absent")


def test_size_mismatch_names_both_files(tnbc_root):
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(tnbc_root / "GT_01" / "01_2.png")
    source = find_tnbc(tnbc_root)[1]
    with pytest.raises(ImageReadError, match=r"GT_01/01_2.png: mask is 40x32 but its image .*01_2.png is 64x64"):
        source.load()


@pytest.mark.realdata
@requires_shared_data("tnbc")
def test_real_tnbc_release():
    sources = find_tnbc(SHARED_DATA / "tnbc")
    assert len(sources) == 50
    per_slide = [sum(s.patient == f"slide{k:02d}" for s in sources) for k in range(1, 12)]
    assert per_slide == [7, 3, 5, 8, 4, 3, 3, 4, 6, 4, 3]
    image, mask = sources[0].load()
    assert image.shape == (512, 512, 3) and mask.max() > 10
