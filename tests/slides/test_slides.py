"""Whole slides: windows, tissue, seams, resume, outputs and bad files, on tiled pyramidal TIFFs written here."""

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import nucleiseg.predict.slides.predict_slide as predict_slide_module
from nucleiseg.config.settings import defaults
from nucleiseg.data.synthetic_slide import discs_content, synthetic_pool, tissue_content, write_slide
from nucleiseg.inference.session import InferenceSession
from nucleiseg.predict.run import predict
from nucleiseg.predict.slides.predict_slide import SlideSettings
from nucleiseg.predict.slides.reader import SlideError, is_slide, open_slide
from tests.conftest import SHARED_DATA, requires_shared_data

RADIUS = 10


class Oracle(torch.nn.Module):
    """A "model" that knows the answer on black-on-white images: nucleus logit from darkness."""

    def forward(self, x):
        return 40 * (0.5 - x.mean(dim=1, keepdim=True))


def oracle_session(model_mpp=0.5, **settings) -> InferenceSession:
    hparams = {
        "encoder": "oracle",
        "head": "binary",
        "threshold": 0.5,
        "postprocess": {"method": "components", "min_area": 3, "fill_holes": 0},
        "data": {"model_mpp": model_mpp},
    }
    options = {"device": "cpu", "precision": "32-true", "tile_size": 128, **settings}
    return InferenceSession(Oracle(), hparams, defaults("predict", **options))


SEAM_CENTRES = (
    [(256.0 * k, 300.0) for k in range(1, 6)]  # on vertical window seams (level 0)
    + [(700.0, 256.0 * k) for k in range(1, 5)]  # on horizontal seams
    + [(512.0, 512.0), (1024.0, 768.0)]  # on window corners
    + [(130.0, 1100.0)]  # inside a window
)
WINDOWS = defaults("slide", window=128, margin=16, thumbnail=512, min_tissue=0.0, labels=True)


@pytest.fixture(scope="module")
def seams_slide(tmp_path_factory):
    """1600 x 1400 px at 0.25 um/px, three levels; with the model at 0.5 um/px windows are 256 level-0 px."""
    path = tmp_path_factory.mktemp("slides") / "seams.tif"
    return write_slide(path, 1600, 1400, discs_content(SEAM_CENTRES, RADIUS), mpp=0.25, tile=128, min_side=256)


def _run(slide_path, out, session=None, settings=WINDOWS, **kwargs):
    return predict([slide_path], out, session or oracle_session(), progress="none", slide_settings=settings, **kwargs)


def test_nuclei_on_window_seams_are_reported_once_and_whole(seams_slide, tmp_path):
    from shapely.geometry import shape

    summary = _run(seams_slide, tmp_path / "out")
    assert summary.ok and summary.done == [("seams.tif", len(SEAM_CENTRES))]
    folder = tmp_path / "out" / "seams"
    done = json.loads((folder / "done.json").read_text())
    assert {"nuclei.geojson", "features.csv", "overview.png", "tissue.png", "slide.json", "labels.tif"} <= set(
        done["outputs"]
    )
    slide_info = json.loads((folder / "slide.json").read_text())
    assert slide_info["plan"]["level"] == 1 and slide_info["plan"]["resize"] == 1.0  # read at the model's 0.5 um/px
    features = json.loads((folder / "nuclei.geojson").read_text())["features"]
    assert len(features) == len(SEAM_CENTRES) and len({f["id"] for f in features}) == len(features)
    # each disc once, whole: its outline (level-0 pixels, QuPath's convention) has the disc's area and centre
    disc_area = np.sum(discs_content([(40.0, 40.0)], RADIUS)(0, 0, 80, 80)[..., 0] == 0)
    for feature in features:
        outline = shape(feature["geometry"])
        assert abs(outline.area - disc_area) <= 0.05 * disc_area
        nearest = min(np.hypot(outline.centroid.x - x, outline.centroid.y - y) for x, y in SEAM_CENTRES)
        assert nearest < 1.5
    table = np.genfromtxt(folder / "features.csv", delimiter=",", names=True)
    assert len(table) == len(SEAM_CENTRES) and sorted(table["nucleus_id"]) == list(range(1, len(SEAM_CENTRES) + 1))
    assert np.allclose(table["area_um2"], table["area_px"] * 0.25**2)  # micrometres from the slide's pixel size
    labels = tifffile.imread(folder / "labels.tif", level=0)
    assert labels.shape == (700, 800) and np.unique(labels[labels > 0]).size == len(SEAM_CENTRES)
    with tifffile.TiffFile(folder / "labels.tif") as labelled:
        assert len(labelled.series[0].levels) > 1  # pyramidal
        reduced = labelled.series[0].levels[1].asarray()
    assert np.array_equal(reduced, labels[::2, ::2])


def test_a_single_level_slide_is_resampled_to_the_models_resolution(tmp_path):
    path = write_slide(
        tmp_path / "flat.tif", 1200, 900, discs_content(SEAM_CENTRES[:6], RADIUS), mpp=0.25, min_side=10**6
    )
    assert len(open_slide(path).level_dimensions) == 1
    summary = _run(path, tmp_path / "out", settings=SlideSettings(**{**WINDOWS.__dict__, "min_pixels": 10**6}))
    info = json.loads((tmp_path / "out" / "flat" / "slide.json").read_text())
    assert info["plan"]["level"] == 0 and info["plan"]["resize"] == 0.5
    assert summary.done == [("flat.tif", len([c for c in SEAM_CENTRES[:6] if c[0] < 1200 and c[1] < 900]))]


def test_only_tissue_is_predicted(tmp_path):
    """Synthetic H&E in one box (12% of the slide), glass elsewhere: background windows are skipped and every
    nucleus found lies in the tissue."""
    box = (600, 400, 1400, 1000)
    path = write_slide(tmp_path / "tissue.tif", 2400, 2000, tissue_content(synthetic_pool(128, 4), [box]), mpp=0.5)
    calls = []
    original = predict_slide_module.predict_window
    session = oracle_session(model_mpp=0.5)
    settings = defaults("slide", window=256, margin=32, thumbnail=600, min_tissue=0.05)

    def counting(*args, **kwargs):
        calls.append(args[3].index)
        return original(*args, **kwargs)

    predict_slide_module.predict_window = counting
    try:
        assert _run(path, tmp_path / "out", session, settings).ok
    finally:
        predict_slide_module.predict_window = original
    info = json.loads((tmp_path / "out" / "tissue" / "slide.json").read_text())
    expected = (box[2] - box[0]) * (box[3] - box[1]) / (2400 * 2000)
    assert abs(info["tissue_fraction"] - expected) < 0.03
    assert info["windows_skipped"] > 0 and len(calls) == info["windows_with_tissue"] < info["windows"]
    table = np.genfromtxt(tmp_path / "out" / "tissue" / "features.csv", delimiter=",", names=True)
    assert len(table) > 0
    margin = 40
    assert (table["centroid_x"] > box[0] - margin).all() and (table["centroid_x"] < box[2] + margin).all()
    assert (table["centroid_y"] > box[1] - margin).all() and (table["centroid_y"] < box[3] + margin).all()


def test_a_killed_slide_run_continues_where_it_stopped(seams_slide, tmp_path, monkeypatch):
    original = predict_slide_module.predict_window
    calls = []

    def killed_after_five(*args, **kwargs):
        calls.append(args[3].index)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_slide_module, "predict_window", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        _run(seams_slide, tmp_path / "out")
    folder = tmp_path / "out" / "seams"
    assert not (folder / "done.json").exists() and not (folder / "nuclei.geojson").exists()
    assert len(list((folder / ".windows").glob("W*.json"))) == 5
    calls.clear()
    monkeypatch.setattr(
        predict_slide_module, "predict_window", lambda *a, **k: calls.append(a[3].index) or original(*a, **k)
    )
    summary = _run(seams_slide, tmp_path / "out")
    assert summary.done == [("seams.tif", len(SEAM_CENTRES))]
    assert len(calls) == 21 - 5  # only the windows the killed run had not finished (21 of the 42 hold a disc)
    again = _run(seams_slide, tmp_path / "out")
    assert again.skipped == ["seams.tif"]  # finished: skipped, unless --overwrite


def test_bad_slides_get_one_line_each_and_the_batch_goes_on(seams_slide, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = folder / "good.tif"
    good.write_bytes(seams_slide.read_bytes())
    (folder / "truncated.svs").write_bytes(seams_slide.read_bytes()[:5000])
    (folder / "notaslide.ndpi").write_bytes(b"this is not a slide")
    write_slide(folder / "nompp.tif", 1200, 900, discs_content(SEAM_CENTRES, RADIUS), mpp=None, min_side=256)
    strict = oracle_session(assumed_mpp=None)  # predict.assumed_mpp=null: inputs without a pixel size refused
    summary = _run(folder, tmp_path / "out", strict)
    assert [name for name, _ in summary.done] == ["good.tif"] and not summary.ok
    reasons = dict((name.rsplit("/", 1)[-1], reason) for name, reason in summary.failed)
    assert set(reasons) == {"truncated.svs", "notaslide.ndpi", "nompp.tif"}
    assert all("\n" not in reason and name in reason for name, reason in reasons.items())
    assert "--mpp" in reasons["nompp.tif"]
    # the user's pixel size makes the same file work, and by default 40x is assumed, with a warning
    assert _run(folder / "nompp.tif", tmp_path / "out2", oracle_session(microns_per_pixel=0.25)).ok
    inside = [c for c in SEAM_CENTRES if c[0] < 1200 and c[1] < 900]
    assert _run(folder / "nompp.tif", tmp_path / "out3").done == [("nompp.tif", len(inside))]
    (tmp_path / "unsupported.xyz").write_bytes(b"x")
    with pytest.raises(SlideError, match=r"unsupported\.xyz: unsupported format"):
        open_slide(tmp_path / "unsupported.xyz")


def test_a_large_plain_tiff_goes_through_windows_and_a_bomb_is_refused(tmp_path):
    from nucleiseg.data.image_io import TooLargeError, read_rgb

    large = np.full((4200, 4200, 3), 255, np.uint8)  # 17.6 MP: above the whole-image limit of the windowed path
    tifffile.imwrite(tmp_path / "large.tif", large)
    assert is_slide(tmp_path / "large.tif") and is_slide(tmp_path / "large.tif").__class__ is not None
    # a PNG that declares 200 megapixels in a few kilobytes (Pillow's bomb): one line, no traceback
    Image.new("1", (20000, 10000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 1_000_000
    with pytest.raises(TooLargeError, match="bomb.png"):
        read_rgb(tmp_path / "bomb.png")
    # a TIFF whose header claims more than its bytes hold is refused before anything is decoded
    small = tmp_path / "claims.tif"
    tifffile.imwrite(small, np.zeros((16, 16), np.uint16), photometric="minisblack", planarconfig="contig")
    data = bytearray(small.read_bytes())
    with tifffile.TiffFile(small) as tiff:
        tags = tiff.pages.first.tags
        for name in ("ImageWidth", "ImageLength"):
            tag = tags[name]
            data[tag.valueoffset : tag.valueoffset + 4] = (200_000).to_bytes(4, "little")
    small.write_bytes(bytes(data))
    with pytest.raises(TooLargeError, match="claims.tif"):
        read_rgb(small)


def test_predict_cli_on_a_slide_writes_the_qupath_outputs(seams_slide, trained_run, tmp_path):
    """The command users run, on a real model: exit code 0, the slide's outputs, --labels honoured."""
    from nucleiseg.cli import main as cli

    code = cli(
        [
            "predict",
            str(seams_slide),
            "--out",
            str(tmp_path / "out"),
            "--checkpoint",
            str(trained_run[3]),
            "--quiet",
            "--labels",
            "--scale",
            "0.5",
            "slide.window=256",
            "slide.min_tissue=0",
        ]
    )
    assert code == 0
    done = json.loads((tmp_path / "out" / "seams" / "done.json").read_text())
    assert "labels.tif" in done["outputs"] and done["slide"]["windows_with_tissue"] > 0


@requires_shared_data("tnbc", "Slide_01")
@pytest.mark.realdata
def test_a_slide_of_real_tnbc_tiles(tmp_path):
    pool = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SHARED_DATA / "tnbc" / "Slide_01").glob("*.png"))]
    box = (1024, 512, 2560, 2048)
    path = write_slide(tmp_path / "tnbc.tif", 4096, 3072, tissue_content(pool, [box]), mpp=0.25, compression="jpeg")
    settings = defaults("slide", window=512, margin=48, thumbnail=1024, min_tissue=0.05)
    session = oracle_session(model_mpp=0.25)
    assert _run(path, tmp_path / "out", session, settings).ok
    info = json.loads((tmp_path / "out" / "tnbc" / "slide.json").read_text())
    expected = (box[2] - box[0]) * (box[3] - box[1]) / (4096 * 3072)
    assert abs(info["tissue_fraction"] - expected) < 0.05 and info["n_nuclei"] > 50


def test_slide_progress_lines_in_a_log(seams_slide, tmp_path, capsys):
    """Off a terminal (a log file, nohup, SLURM): plain lines with windows done/total, nuclei so far and an ETA."""
    predict([seams_slide], tmp_path / "out", oracle_session(), progress="plain", slide_settings=WINDOWS)
    printed = capsys.readouterr().err
    assert "seams.tif windows 1/21" in printed and "seams.tif windows 21/21" in printed  # 21 of 42 hold a disc
    assert "12 nuclei" in printed and "ETA" in printed


def test_labels_tif_holds_each_nucleus_whole_as_the_geojson(seams_slide, tmp_path):
    """labels.tif (read level: 2 level-0 pixels per pixel here) against the GeoJSON outlines: every nucleus,
    those across window seams included, has exactly the pixels its outline encloses."""
    import shapely
    from shapely.geometry import shape

    assert _run(seams_slide, tmp_path / "out").ok
    folder = tmp_path / "out" / "seams"
    labels = tifffile.imread(folder / "labels.tif", level=0)
    rows, cols = np.mgrid[: labels.shape[0], : labels.shape[1]]
    for feature in json.loads((folder / "nuclei.geojson").read_text())["features"]:
        nucleus = int(feature["properties"]["measurements"]["nucleus_id"])
        outline = shape(feature["geometry"])
        x0, y0, x1, y1 = (int(v) // 2 for v in outline.bounds)
        box = (slice(max(0, y0 - 2), y1 + 3), slice(max(0, x0 - 2), x1 + 3))
        inside = shapely.contains_xy(outline, 2 * cols[box] + 1, 2 * rows[box] + 1)
        assert np.array_equal(inside, labels[box] == nucleus), nucleus
        assert (labels == nucleus).sum() == inside.sum()


def test_a_resumed_slide_must_be_the_same_slide(tmp_path, monkeypatch):
    """Kill a run on A/s.tif, then predict B/s.tif (another slide, same name and resolution) into the same folder:
    refused, never finished with A's nuclei; --overwrite starts afresh with B's."""
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    first = write_slide(tmp_path / "A" / "s.tif", 1024, 768, discs_content(SEAM_CENTRES[:4], RADIUS), mpp=0.25)
    other = [(x + 60.0, y + 40.0) for x, y in SEAM_CENTRES[4:10]]
    second = write_slide(tmp_path / "B" / "s.tif", 1024, 768, discs_content(other, RADIUS), mpp=0.25)
    original, calls = predict_slide_module.predict_window, []

    def killed_after_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_slide_module, "predict_window", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        _run(first, tmp_path / "out")
    monkeypatch.setattr(predict_slide_module, "predict_window", original)
    summary = _run(second, tmp_path / "out")
    assert not summary.ok and not summary.done and not (tmp_path / "out" / "s" / "done.json").exists()
    [(name, why)] = summary.not_written
    assert name == "s.tif" and "another input" in why and str(first.resolve()) in why
    summary = _run(second, tmp_path / "out", overwrite=True)
    inside = [c for c in other if c[0] < 1024 and c[1] < 768]
    assert summary.ok and summary.done == [("s.tif", len(inside))]
    table = np.genfromtxt(tmp_path / "out" / "s" / "features.csv", delimiter=",", names=True)
    for x, y in zip(table["centroid_x"], table["centroid_y"], strict=True):
        assert min(np.hypot(x - cx, y - cy) for cx, cy in inside) < 1.5  # B's nuclei, none of A's
    assert json.loads((tmp_path / "out" / "s" / "done.json").read_text())["input"]["path"] == str(second.resolve())


def test_labels_come_and_go_with_what_was_asked(seams_slide, tmp_path, caplog):
    """--labels on a slide finished without it adds labels.tif (not "skipped"); --overwrite without --labels
    leaves no labels.tif of the earlier run, nor lists one in done.json. The tissue share is printed."""
    import logging

    plain = SlideSettings(**{**WINDOWS.__dict__, "labels": False})
    with caplog.at_level(logging.INFO, logger="nucleiseg"):
        assert _run(seams_slide, tmp_path / "out", settings=plain).ok
    assert "seams.tif: tissue" in caplog.text and "skipped: " in caplog.text
    folder = tmp_path / "out" / "seams"
    assert not (folder / "labels.tif").exists()
    with_labels = _run(seams_slide, tmp_path / "out", settings=WINDOWS)
    assert with_labels.done == [("seams.tif", len(SEAM_CENTRES))] and (folder / "labels.tif").is_file()
    assert "labels.tif" in json.loads((folder / "done.json").read_text())["outputs"]
    again = _run(seams_slide, tmp_path / "out", settings=plain, overwrite=True)
    assert again.ok and not (folder / "labels.tif").exists()
    done = json.loads((folder / "done.json").read_text())
    assert "labels.tif" not in done["outputs"]
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
        [*done["outputs"], "done.json"]
    )


def _two_regions(tmp_path):
    """Two QuPath annotations on the seams slide: a tumour box around three discs, a stroma box around two."""
    tumour = [[150, 200], [900, 200], [900, 400], [150, 400], [150, 200]]  # discs (256|512|768, 300), (700, 256)
    stroma = [[600, 650], [800, 650], [800, 1100], [600, 1100], [600, 650]]  # discs (700, 768) and (700, 1024)
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [tumour]},
            "properties": {"objectType": "annotation", "name": "tumour"},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [stroma]},
            "properties": {"objectType": "annotation", "classification": {"name": "Stroma"}},
        },
    ]
    path = tmp_path / "regions.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_nuclei_only_inside_the_regions_with_counts_per_region(seams_slide, tmp_path):
    regions = _two_regions(tmp_path)
    summary = _run(seams_slide, tmp_path / "out", roi=regions)
    assert summary.done == [("seams.tif", 6)]
    folder = tmp_path / "out" / "seams"
    table = np.genfromtxt(folder / "features.csv", delimiter=",", names=True, dtype=None, encoding=None)
    assert sorted(table["region"]) == ["Stroma-2", "Stroma-2", "tumour", "tumour", "tumour", "tumour"]
    for x, y in zip(table["centroid_x"], table["centroid_y"], strict=True):
        assert (150 <= x <= 900 and 200 <= y <= 400) or (600 <= x <= 800 and 650 <= y <= 1100)
    info = json.loads((folder / "slide.json").read_text())
    assert info["regions"]["tumour"]["nuclei"] == 4 and info["regions"]["Stroma-2"]["nuclei"] == 2
    assert info["regions"]["tumour"]["area_mm2"] == pytest.approx(750 * 200 * 0.25**2 / 1e6)
    assert len(json.loads((folder / "nuclei.geojson").read_text())["features"]) == 6
    # the same regions as a mask image at 1/8 of the slide: the same nuclei
    mask = np.zeros((1400 // 8, 1600 // 8), np.uint8)
    mask[200 // 8 : 400 // 8, 150 // 8 : 900 // 8] = 255
    mask[650 // 8 : 1100 // 8, 600 // 8 : 800 // 8] = 255
    Image.fromarray(mask).save(tmp_path / "regions.png")
    again = _run(seams_slide, tmp_path / "out2", roi=tmp_path / "regions.png")
    assert again.done == [("seams.tif", 6)]
    info = json.loads((tmp_path / "out2" / "seams" / "slide.json").read_text())
    assert sorted(r["nuclei"] for r in info["regions"].values()) == [2, 4]


def test_regions_that_miss_the_slide_or_do_not_parse_are_one_line(seams_slide, tmp_path):
    far = {"type": "Polygon", "coordinates": [[[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]]}
    (tmp_path / "far.geojson").write_text(json.dumps(far))
    (tmp_path / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [')
    Image.fromarray(np.full((100, 30), 255, np.uint8)).save(tmp_path / "narrow.png")
    for name, message in (
        ("far.geojson", "lie outside the slide"),
        ("broken.geojson", "not a GeoJSON of regions"),
        ("narrow.png", "does not have the slide's shape"),
    ):
        summary = _run(seams_slide, tmp_path / f"out-{name}", roi=tmp_path / name)
        [(_, reason)] = summary.failed
        assert message in reason and name in reason and "\n" not in reason


def test_windows_in_flight_change_nothing_in_the_outputs(seams_slide, tmp_path):
    """Three windows in flight (the network's threads shared between them) write what one at a time writes."""
    one = SlideSettings(**{**WINDOWS.__dict__, "workers": 1})
    two = SlideSettings(**{**WINDOWS.__dict__, "workers": 3})
    assert _run(seams_slide, tmp_path / "one", settings=one).ok
    assert _run(seams_slide, tmp_path / "two", settings=two).ok
    for name in ("features.csv", "slide.json"):
        first = (tmp_path / "one" / "seams" / name).read_text()
        second = (tmp_path / "two" / "seams" / name).read_text()
        if name == "slide.json":
            first, second = (json.loads(t) for t in (first, second))
            assert (first.pop("windows_in_flight"), second.pop("windows_in_flight")) == (1, 3)
            for info in (first, second):
                info.pop("seconds_this_session")
        assert first == second, name
    assert np.array_equal(
        tifffile.imread(tmp_path / "one" / "seams" / "labels.tif"),
        tifffile.imread(tmp_path / "two" / "seams" / "labels.tif"),
    )


def test_tissue_saturation_is_skimages_bit_for_bit():
    from skimage.color import rgb2hsv

    from nucleiseg.predict.slides.tissue import saturation

    image = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    image[:10] = 0  # black: no division by zero
    image[10:20] = 255  # white: no saturation
    assert np.array_equal(saturation(image), rgb2hsv(image)[..., 1])


def test_a_finished_slide_leaves_only_its_outputs_with_ids_stable_across_runs(seams_slide, tmp_path):
    """No journal or temporary file stays after done.json; the GeoJSON ids are the same on a re-run (QuPath
    replaces the nuclei on re-import instead of doubling them); labels.tif's resolution is said."""
    assert _run(seams_slide, tmp_path / "a").ok and _run(seams_slide, tmp_path / "b").ok
    folder = tmp_path / "a" / "seams"
    done = json.loads((folder / "done.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted([*done["outputs"], "done.json"])
    ids = [[f["id"] for f in json.loads((tmp_path / run / "seams" / "nuclei.geojson").read_text())["features"]]
           for run in ("a", "b")]  # fmt: skip
    assert ids[0] == ids[1] and len(set(ids[0])) == len(SEAM_CENTRES)
    info = json.loads((folder / "slide.json").read_text())
    assert info["labels_tif"] == {"level": 1, "level0_pixels_per_pixel": 2.0, "microns_per_pixel": 0.5}


def test_overwrite_keeps_the_old_outputs_until_the_new_ones_are_complete(tmp_path):
    """--overwrite of a finished slide whose new file fails while its windows are read (a damaged tile at the
    level the model reads): the old outputs stay as they were; a good file then replaces them."""
    path = tmp_path / "in" / "s.tif"
    path.parent.mkdir()
    content = discs_content(SEAM_CENTRES, RADIUS)
    write_slide(path, 1600, 1400, content, mpp=0.25, tile=128, compression="jpeg", min_side=256)
    assert _run(path, tmp_path / "out").ok
    folder = tmp_path / "out" / "s"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with tifffile.TiffFile(path) as tiff:  # level 1 (0.5 um/px): the level the windows are read at
        page = tiff.pages[1]
        offsets = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    data = bytearray(path.read_bytes())
    for offset, count in offsets:
        data[offset + count // 2 : offset + count // 2 + 2] = b"\xff\xd9"
    path.write_bytes(bytes(data))
    summary = _run(path, tmp_path / "out", overwrite=True)
    assert not summary.ok and "cannot read level 1" in summary.failed[0][1]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    fewer = discs_content(SEAM_CENTRES[:5], RADIUS)
    write_slide(path, 1600, 1400, fewer, mpp=0.25, tile=128, compression="jpeg", min_side=256)
    replaced = _run(path, tmp_path / "out", overwrite=True)
    assert replaced.done == [("s.tif", 5)] and not (tmp_path / "out" / ".s.replacing").exists()
    assert json.loads((folder / "done.json").read_text())["n_nuclei"] == 5


def test_a_12_bit_slide_scales_every_window_alike(tmp_path, caplog):
    """A 12-bit slide in 16-bit samples: a dim window (largest value 900) was scaled as if 10-bit, 4x brighter
    than its neighbour; the slide's depth is decided once."""
    image = np.full((512, 512, 3), 900, np.uint16)
    image[:, 256:] = 4000  # the right half bright: 12-bit
    path = tmp_path / "twelve.tif"
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb")
    with caplog.at_level("INFO", logger="nucleiseg"):
        slide = open_slide(path, mpp=0.5)
    try:
        dim, bright = slide.read(0, 0, 0, 128, 128), slide.read(0, 384, 0, 128, 128)
    finally:
        slide.close()
    assert int(dim.max()) == round(900 * 255 / 4095) and int(bright.max()) == round(4000 * 255 / 4095)
    assert "12-bit samples" in caplog.text
