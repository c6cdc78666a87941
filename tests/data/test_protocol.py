import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from nucleiseg.config.compose import compose
from nucleiseg.data.prepare import load_manifest, plan_splits, prepare_dataset, prepared_path
from nucleiseg.data.split import carve_validation, split_by_patient, split_paper
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_sources
from nucleiseg.data.transforms import augment_pair, resize_pair
from nucleiseg.util.errors import ConfigError, ImageReadError
from tests.conftest import SHARED_DATA, requires_shared_data, write_monuseg, write_tnbc

TNBC_SLIDES = [7, 3, 5, 8, 4, 3, 3, 4, 6, 4, 3]  # images per slide in the real release


def tnbc_like():
    return synthetic_sources("tnbc", TNBC_SLIDES, SyntheticSpec(16, 16, 2))


def test_paper_split_is_25_25_and_stratified_over_slides():
    train, test = split_paper(tnbc_like(), n_test=25, seed=0)
    assert len(train) == 25 and len(test) == 25
    for slide, count in enumerate(TNBC_SLIDES, start=1):
        in_test = sum(s.patient == f"tnbc-p{slide:02d}" for s in test)
        assert in_test in (count // 2, count - count // 2)  # about half of every slide
    assert {s.source_id for s in train}.isdisjoint({s.source_id for s in test})


def test_paper_split_depends_on_the_seed_only():
    ids = lambda split: sorted(s.source_id for s in split[1])  # noqa: E731
    assert ids(split_paper(tnbc_like(), 25, 0)) == ids(split_paper(tnbc_like(), 25, 0))
    assert ids(split_paper(tnbc_like(), 25, 0)) != ids(split_paper(tnbc_like(), 25, 1))


def test_by_patient_split_keeps_slides_whole():
    train, test = split_by_patient(tnbc_like(), n_test=25, seed=0)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in test})
    assert len(test) == 25  # 50 images over 11 slides: a subset summing to exactly 25 exists


def test_validation_is_carved_by_source_and_stratified():
    pool = synthetic_sources("monuseg", [1] * 30, SyntheticSpec(16, 16, 2)) + tnbc_like()[:25]
    train, val = carve_validation(pool, 0.1, seed=0, by_patient=False)
    assert len(train) + len(val) == 55
    assert {s.dataset for s in val} == {"monuseg", "tnbc"}
    assert {s.source_id for s in train}.isdisjoint({s.source_id for s in val})
    with pytest.raises(ConfigError, match="val_fraction"):
        carve_validation(pool, 1.5, 0, False)


def test_resize_keeps_instance_labels_and_uses_area_for_images():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, ::2] = 200  # stripes average to 100 under area interpolation
    mask = np.zeros((100, 100), np.int32)
    mask[10:40, 10:40], mask[60:90, 60:90] = 1, 2
    small_image, small_mask = resize_pair(image, mask, 50)
    assert small_image.shape == (50, 50, 3) and np.allclose(small_image, 100, atol=1)
    assert small_mask.shape == (50, 50) and set(np.unique(small_mask)) == {0, 1, 2}
    assert np.all(small_mask[6:19, 6:19] == 1)


def test_paper_augmentations_match_their_definitions():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.int32)
    mask[4:10, 2:8], mask[20:28, 18:30] = 1, 2
    flipped_image, flipped_mask = augment_pair(image, mask, "hflip")
    assert np.array_equal(flipped_image, image[:, ::-1]) and np.array_equal(flipped_mask, mask[:, ::-1])
    v_image, v_mask = augment_pair(image, mask, "vflip")
    assert np.array_equal(v_image, image[::-1]) and np.array_equal(v_mask, mask[::-1])
    _, rotated = augment_pair(image, mask, "rotate45")
    assert set(np.unique(rotated)) == {0, 1, 2}
    # a 45 degree rotation keeps a nucleus' area (up to nearest-neighbour rounding) and moves it
    assert abs(np.count_nonzero(rotated == 2) - 96) <= 12 and not np.array_equal(rotated, mask)
    with pytest.raises(ConfigError, match="unknown augmentation 'shear'"):
        augment_pair(image, mask, "shear")


def _data_cfg(tmp_path, tnbc, monuseg, **protocol):
    cfg = compose(
        [
            f"paths.root_dir={tmp_path}",
            f"data.sources.tnbc.root={tnbc}",
            f"data.sources.monuseg.root={monuseg}",
            "data.protocol.image_size=32",
            "data.protocol.n_test=3",
        ]
        + [f"data.protocol.{k}={v}" for k, v in protocol.items()]
    )
    return cfg.data


@pytest.fixture
def raw(tmp_path):
    return write_tnbc(tmp_path / "tnbc", images_per_slide=(3, 2, 2, 1)), write_monuseg(tmp_path / "monuseg", 4)


def test_prepare_builds_the_paper_protocol(tmp_path, raw):
    cfg = _data_cfg(tmp_path, *raw)
    folder = prepare_dataset(cfg)
    manifest = load_manifest(folder)
    sources = {split: set(ids) for split, ids in manifest["source_images"].items()}
    assert len(sources["test"]) == 3 and all(s.startswith("tnbc/") for s in sources["test"])
    assert len(sources["train"]) + len(sources["val"]) == 4 + 8 - 3
    # no source image in two splits, and every augmented copy sits with its source
    assert not (sources["train"] & sources["val"]) and not (sources["train"] & sources["test"])
    assert not (sources["val"] & sources["test"])
    assert manifest["counts"]["train"] == 3 * len(sources["train"])  # Algorithm 1: 3 copies per pair
    assert manifest["counts"]["test"] == 3
    images = np.load(folder / "train" / "images.npy")
    masks = np.load(folder / "train" / "masks.npy")
    assert images.shape == (manifest["counts"]["train"], 32, 32, 3) and masks.dtype == np.int32
    augmentations = [r["augmentation"] for r in manifest["splits"]["train"][:3]]
    assert augmentations == ["hflip", "vflip", "rotate45"]
    assert manifest["splits"]["test"][0]["image_sha256"] is not None


def test_prepare_twice_gives_the_same_hash(tmp_path, raw):
    first = load_manifest(prepare_dataset(_data_cfg(tmp_path, *raw)))
    again = load_manifest(prepare_dataset(_data_cfg(tmp_path, *raw), overwrite=True))
    assert first["content_hash"] == again["content_hash"]
    other = load_manifest(prepare_dataset(_data_cfg(tmp_path, *raw, seed=5)))
    assert other["content_hash"] != first["content_hash"]


def test_by_patient_mode_keeps_slides_out_of_two_splits(tmp_path, raw):
    manifest = load_manifest(prepare_dataset(_data_cfg(tmp_path, *raw, split="by_patient")))
    patients = {split: {r["patient"] for r in records} for split, records in manifest["splits"].items()}
    assert not (patients["train"] & patients["test"]) and not (patients["val"] & patients["test"])


def test_a_broken_image_leaves_no_prepared_folder(tmp_path, raw):
    tnbc, monuseg = raw
    (tnbc / "Slide_02" / "02_1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = _data_cfg(tmp_path, tnbc, monuseg)
    with pytest.raises(ImageReadError, match="02_1.png"):
        prepare_dataset(cfg)
    target = prepared_path(cfg)
    assert not target.exists()
    assert not any(p.name.startswith(f".{target.name}") for p in target.parent.iterdir())


def test_existing_prepared_folder_is_reused_not_overwritten(tmp_path, raw):
    cfg = _data_cfg(tmp_path, *raw)
    folder = prepare_dataset(cfg)
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert prepare_dataset(cfg) == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp


def test_invalid_protocol_options_are_named(tmp_path, raw):
    with pytest.raises(ConfigError, match="data.protocol.split='random'"):
        plan_splits({"tnbc": tnbc_like()}, OmegaConf.to_container(_data_cfg(tmp_path, *raw, split="random").protocol))


@pytest.mark.realdata
@requires_shared_data("tnbc")
def test_real_paper_protocol_gives_165_training_pairs(tmp_path):
    root = SHARED_DATA
    cfg = compose(
        [
            f"paths.root_dir={tmp_path}",
            f"data.sources.tnbc.root={root / 'tnbc'}",
            f"data.sources.monuseg.root={root / 'monuseg'}",
            f"data.sources.monuseg.mask_dir={root / 'monuseg' / 'binary_masks_mirror'}",
        ]
    ).data
    manifest = load_manifest(prepare_dataset(cfg))
    counts = manifest["counts"]
    assert counts["train"] + counts["val"] == 165 and counts["test"] == 25
    n_sources = {k: len(v) for k, v in manifest["source_images"].items()}
    assert n_sources["train"] + n_sources["val"] == 55
    assert json.dumps(manifest["config"]["protocol"]["augment"]) == '["hflip", "vflip", "rotate45"]'


def _disc_sources(root: Path, tnbc_side: int, monuseg_side: int, diameter_px: int) -> tuple[Path, Path, Path]:
    """One TNBC-layout and one MoNuSeg-layout image (both 0.25 um/px) with one disc of ``diameter_px``."""
    from PIL import Image

    def draw(side: int) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = np.ogrid[:side, :side]
        disc = (rows - side // 4) ** 2 + (cols - side // 4) ** 2 <= (diameter_px / 2) ** 2  # in one tile
        image = np.full((side, side, 3), 230, np.uint8)
        image[disc] = (90, 60, 150)
        return image, (disc * 255).astype(np.uint8)

    tnbc, monuseg, masks = root / "tnbc", root / "monuseg", root / "monuseg_masks"
    for folder in (tnbc / "Slide_01", tnbc / "GT_01", monuseg / "Tissue Images", masks):
        folder.mkdir(parents=True)
    image, mask = draw(tnbc_side)
    Image.fromarray(image).save(tnbc / "Slide_01" / "01_1.png")
    Image.fromarray(mask).save(tnbc / "GT_01" / "01_1.png")
    image, mask = draw(monuseg_side)
    name = "TCGA-11-1111-01Z-00-DX1"
    Image.fromarray(image).save(monuseg / "Tissue Images" / f"{name}.tif")
    Image.fromarray(mask).save(masks / f"{name}.png")
    return tnbc, monuseg, masks


def _nucleus_areas(tmp_path: Path, sources: tuple[Path, Path, Path], *protocol: str) -> tuple[dict, dict]:
    tnbc, monuseg, masks = sources
    cfg = compose(
        [
            f"paths.root_dir={tmp_path}",
            f"data.sources.tnbc.root={tnbc}",
            f"data.sources.monuseg.root={monuseg}",
            f"data.sources.monuseg.mask_dir={masks}",
            "data.protocol.split=none",
            "data.protocol.val_fraction=0",
            "data.protocol.augment=[]",
            *protocol,
        ]
    ).data
    folder = prepare_dataset(cfg)
    manifest = load_manifest(folder)
    stored = np.load(folder / "train" / "masks.npy")
    areas: dict[str, list[int]] = {}
    for record in manifest["splits"]["train"]:
        counts = np.bincount(stored[record["index"]].ravel())[1:]
        areas.setdefault(record["dataset"], []).extend(int(c) for c in counts if c)
    return areas, manifest


def test_physical_scale_gives_a_nucleus_the_same_size_from_both_datasets(tmp_path):
    """A 6 um nucleus (24 px at 0.25 um/px) in a 64 px TNBC-like image and a 128 px MoNuSeg-like one. The paper's
    squash to 64 px leaves the TNBC one at 24 px and shrinks the MoNuSeg one to 12; data.protocol.mpp=0.5 gives
    both 12 px (about 113 px of area), and cuts the larger image into tiles instead of squashing it."""
    sources = _disc_sources(tmp_path / "raw", 64, 128, 24)
    paper, _ = _nucleus_areas(tmp_path / "paper", sources, "data.protocol.image_size=64")
    assert paper["tnbc"][0] > 3 * paper["monuseg"][0]
    physical, manifest = _nucleus_areas(
        tmp_path / "mpp", sources, "data.protocol.image_size=32", "data.protocol.mpp=0.5"
    )
    expected = np.pi * 6**2  # diameter 12 model pixels
    assert len(physical["tnbc"]) == 1 and len(physical["monuseg"]) == 1  # the disc lies in one tile of four
    for dataset in ("tnbc", "monuseg"):
        assert physical[dataset][0] == pytest.approx(expected, rel=0.15)
    assert manifest["config"]["protocol"]["mpp"] == 0.5
    monuseg_tiles = [r for r in manifest["splits"]["train"] if r["dataset"] == "monuseg"]
    assert sorted(tuple(r["tile"]) for r in monuseg_tiles) == [(0, 0), (0, 32), (32, 0), (32, 32)]


def test_physical_scale_needs_each_source_pixel_size(tmp_path):
    sources = _disc_sources(tmp_path / "raw", 64, 128, 24)
    with pytest.raises(ConfigError, match=r"data.sources.tnbc.microns_per_pixel is not set"):
        _nucleus_areas(tmp_path, sources, "data.protocol.mpp=0.5", "data.sources.tnbc.microns_per_pixel=null")


def test_a_mask_changed_on_disk_makes_the_prepared_dataset_stale(tmp_path, raw):
    """The prepared arrays matched their manifest, so an edited mask was trained on in its old form."""
    tnbc, monuseg = raw
    cfg = _data_cfg(tmp_path, tnbc, monuseg)
    folder = prepare_dataset(cfg)
    before = load_manifest(folder)["content_hash"]
    mask_path = tnbc / "GT_01" / "01_1.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[:] = 0
    mask[4:12, 4:12] = 255  # one square nucleus instead of the annotated ones
    Image.fromarray(mask).save(mask_path)
    lines = []
    assert prepare_dataset(cfg, log=lines.append) == folder
    assert any("01_1.png changed since it was prepared" in line for line in lines)
    assert load_manifest(folder)["content_hash"] != before
    lines.clear()
    prepare_dataset(cfg, log=lines.append)
    assert lines == [f"reusing prepared dataset {folder}"]


def test_a_protocol_key_added_later_keeps_earlier_prepared_folders(tmp_path, raw):
    # data.protocol.folds came with the typed datasets; a config without it (as every config was before) must name
    # the same prepared folder, or every dataset and run prepared before would be orphaned.
    cfg = _data_cfg(tmp_path, *raw)
    assert cfg.protocol.folds is None
    before = OmegaConf.to_container(cfg, resolve=True)
    before["protocol"].pop("folds")
    assert prepared_path(cfg) == prepared_path(before)
    assert prepared_path(_data_cfg(tmp_path, *raw, split="folds", folds="[[1],[2],[3]]")) != prepared_path(cfg)
