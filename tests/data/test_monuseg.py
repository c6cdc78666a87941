import shutil

import numpy as np
import pytest
from PIL import Image

from nucleiseg.data.aperio_xml import rasterise_regions, read_regions
from nucleiseg.data.monuseg import find_monuseg
from nucleiseg.util.errors import AnnotationError, DatasetLayoutError
from tests.conftest import SHARED_DATA, region_xml, requires_shared_data, write_monuseg

SQUARE = np.array([[2, 2], [8, 2], [8, 8], [2, 8]], dtype=float)


def test_regions_rasterise_to_one_label_each(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(region_xml([SQUARE, SQUARE + [10, 0]]))
    mask = rasterise_regions(path, (12, 20))
    assert mask.dtype == np.int32 and mask.max() == 2
    assert np.all(mask[3:8, 3:8] == 1) and np.all(mask[3:8, 13:18] == 2)
    assert mask[0, 0] == 0


def test_overlaps_resolve_in_favour_of_the_smaller_nucleus(tmp_path):
    big = np.array([[0, 0], [15, 0], [15, 15], [0, 15]], dtype=float)
    small = np.array([[5, 5], [9, 5], [9, 9], [5, 9]], dtype=float)
    for order in ([big, small], [small, big]):
        path = tmp_path / "overlap.xml"
        path.write_text(region_xml(order))
        mask = rasterise_regions(path, (20, 20))
        assert mask.max() == 2
        assert len(np.unique(mask[6:9, 6:9])) == 1  # the small square is whole, not swallowed
        assert np.count_nonzero(mask == mask[7, 7]) < 30


def test_malformed_vertex_names_file_and_region(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text(region_xml([SQUARE, SQUARE], ids=["15", "16"]).replace('X="8.00" Y="8.00"', 'X="8,0" Y="8"', 2))
    with pytest.raises(AnnotationError, match=r"bad.xml: region 15 has a malformed vertex"):
        read_regions(path)


def test_zero_regions_is_an_error(tmp_path):
    path = tmp_path / "none.xml"
    path.write_text(region_xml([]))
    with pytest.raises(AnnotationError, match="none.xml: no Region"):
        read_regions(path)


def test_xml_bomb_is_refused(tmp_path):
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        '<Annotations><Annotation><Regions><Region Id="1"><Vertices>'
        '<Vertex X="&lol2;" Y="1"/></Vertices></Region></Regions></Annotation></Annotations>'
    )
    path = tmp_path / "bomb.xml"
    path.write_text(bomb)
    with pytest.raises(AnnotationError, match="bomb.xml: refused unsafe XML"):
        read_regions(path)


def test_not_xml_is_reported(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text("<Annotations><Region>")
    with pytest.raises(AnnotationError, match="broken.xml: not well-formed"):
        read_regions(path)


def test_training_release_layout_round_trips_instances(monuseg_root):
    sources = find_monuseg(monuseg_root.parent)
    assert len(sources) == 4 and all(s.annotation_path.suffix == ".xml" for s in sources)
    assert sources[0].patient == "TCGA-10-1000"
    image, mask = sources[0].load()
    assert image.shape == (80, 80, 3) and mask.max() >= 3


def test_underscore_folder_names_and_test_release_layout(tmp_path, monuseg_root):
    renamed = tmp_path / "renamed"
    shutil.copytree(monuseg_root, renamed)
    (renamed / "Tissue Images").rename(renamed / "Tissue_Images")
    assert len(find_monuseg(renamed)) == 4
    flat = tmp_path / "MoNuSegTestData"
    flat.mkdir()
    for path in [*(monuseg_root / "Tissue Images").iterdir(), *(monuseg_root / "Annotations").iterdir()]:
        shutil.copy(path, flat / path.name)
    assert len(find_monuseg(flat)) == 4


def test_mask_folder_replaces_missing_xml(tmp_path, monuseg_root):
    missing = sorted((monuseg_root / "Annotations").iterdir())[0]
    missing.unlink()
    with pytest.raises(DatasetLayoutError, match=f"{missing.stem}.tif: no annotation"):
        find_monuseg(monuseg_root)
    masks = tmp_path / "masks"
    masks.mkdir()
    binary = np.zeros((80, 80), np.uint8)
    binary[10:20, 10:20] = 1
    Image.fromarray(binary).save(masks / f"{missing.stem}.png")
    sources = find_monuseg(monuseg_root, mask_dir=masks)
    source = next(s for s in sources if s.name == missing.stem)
    assert source.annotation_path.suffix == ".png"
    assert source.load()[1].max() == 1


def test_wrong_root_lists_the_layout(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetLayoutError, match="Tissue Images"):
        find_monuseg(tmp_path / "nothing")


@pytest.mark.realdata
@requires_shared_data("monuseg")
def test_real_monuseg_training_release():
    root = SHARED_DATA / "monuseg"
    sources = find_monuseg(root, mask_dir=root / "binary_masks_mirror")
    assert len(sources) == 30
    assert sum(s.annotation_path.suffix == ".xml" for s in sources) == 13
    xml_source = next(s for s in sources if s.annotation_path.suffix == ".xml")
    image, mask = xml_source.load()
    assert image.shape == (1000, 1000, 3)
    mirror = np.asarray(Image.open(root / "binary_masks_mirror" / f"{xml_source.name}.png")) > 0
    iou = np.logical_and(mask > 0, mirror).sum() / np.logical_or(mask > 0, mirror).sum()
    assert iou > 0.95  # the data README reports ~0.98 between the XML and the mirror's masks
    assert mask.max() == len(read_regions(xml_source.annotation_path))


def test_an_xml_of_another_image_size_is_refused_not_clipped(tmp_path):
    from nucleiseg.data.aperio_xml import rasterise_regions
    from nucleiseg.util.errors import AnnotationError

    square = np.array([[10.0, 10.0], [30.0, 10.0], [30.0, 30.0], [10.0, 30.0]])
    far = square + [900.0, 700.0]
    (tmp_path / "a.xml").write_text(region_xml([square, far]))
    assert rasterise_regions(tmp_path / "a.xml", (1000, 1000)).max() == 2
    with pytest.raises(AnnotationError, match=r"a\.xml: its outlines reach .* but the image is 500x500"):
        rasterise_regions(tmp_path / "a.xml", (500, 500))  # the image was resized: regions would be clipped
    (tmp_path / "off.xml").write_text(
        region_xml([np.array([[-15.0, -15.0], [-5.0, -15.0], [-5.0, -5.0], [-15.0, -5.0]])])
    )
    with pytest.raises(AnnotationError, match=r"off\.xml: none of its 1 regions has a pixel inside"):
        rasterise_regions(tmp_path / "off.xml", (1000, 1000))
    edge = np.array([[-3.0, 5.0], [20.0, 5.0], [20.0, 1003.0], [-3.0, 1003.0]])  # hand-drawn overshoot: fine
    (tmp_path / "edge.xml").write_text(region_xml([edge]))
    assert rasterise_regions(tmp_path / "edge.xml", (1000, 1000)).max() == 1


def test_an_image_resized_beside_its_xml_is_refused(tmp_path):
    """The outlines fit inside a 2x upscaled image, so the old check passed, and three quarters of the image had
    no annotated nucleus: Jaccard 0.14, no word. MoNuSeg outlines every nucleus: the extent gives it away."""
    from nucleiseg.data.monuseg import find_monuseg_release

    root = write_monuseg(tmp_path / "release", n_images=1, size=200)
    [image_path] = list((root / "Tissue Images").glob("*.tif"))
    [source] = find_monuseg_release(root)
    assert source.load()[1].max() > 0  # as written, it loads
    image = Image.open(image_path)
    image.resize((400, 400)).save(image_path, compression="tiff_lzw")
    [resized] = find_monuseg_release(root)
    with pytest.raises(AnnotationError, match=r"of a 400x400 image; MoNuSeg outlines every nucleus.*resized about 2"):
        resized.load()
