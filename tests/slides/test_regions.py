"""Every count true at the edges: window selection loses no nucleus of the tissue or of a region, and region
outlines as pathologists draw them (self-intersecting, repeated names, nested, off the slide, empty) give the
right nuclei, areas and densities."""

import json

import numpy as np
import pytest

from nucleiseg.config.settings import defaults
from nucleiseg.data.synthetic_slide import discs_content, write_slide
from tests.slides.test_slides import RADIUS, oracle_session

MPP = 0.25  # level-0 pixel size of the slides written here; the oracle model works at 0.5 um/px
# discs in a grid, 150 level-0 px apart (windows are 256 level-0 px: 128 model px at 0.5 um/px)
GRID = [(float(x), float(y)) for x in range(60, 1600, 150) for y in range(60, 1400, 150)]


@pytest.fixture(scope="module")
def grid_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("regions") / "grid.tif"
    return write_slide(path, 1600, 1400, discs_content(GRID, RADIUS), mpp=MPP, tile=128, min_side=256)


def _predict(slide, out, roi=None, **slide_options):
    from nucleiseg.predict.run import predict

    settings = defaults("slide", window=128, margin=16, thumbnail=512, **slide_options)
    summary = predict([slide], out, oracle_session(), progress="none", slide_settings=settings, roi=roi)
    assert summary.ok, summary.failed
    folder = out / slide.stem
    table = np.genfromtxt(folder / "features.csv", delimiter=",", names=True, dtype=None, encoding=None)
    return np.atleast_1d(table), json.loads((folder / "slide.json").read_text())


def _geojson(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _annotation(coordinates, name=None, kind="Polygon"):
    properties = {"objectType": "annotation", **({"name": name} if name else {})}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coordinates}, "properties": properties}


def _inside(polygon_xy, points):
    from shapely.geometry import Point, Polygon

    polygon = Polygon(polygon_xy).buffer(0) if Polygon(polygon_xy).is_valid else None
    if polygon is None:
        from shapely import make_valid

        polygon = make_valid(Polygon(polygon_xy))
    return [p for p in points if polygon.contains(Point(*p))]


def test_isolated_nuclei_are_found_with_the_default_window_selection(grid_slide, tmp_path):
    """Each disc covers well under 2% of its window: the old rule (2% tissue per window) skipped them all."""
    table, info = _predict(grid_slide, tmp_path / "out")
    assert len(table) == len(GRID) and info["windows_with_tissue"] == info["windows"]
    assert 0 < info["tissue_fraction"] < 0.02  # each window is far under the old 2% rule


def test_a_region_clipping_a_window_by_a_strip_loses_no_nucleus(grid_slide, tmp_path):
    """The region's left edge is 3 px left of a column of disc centres sitting just inside a window's right
    edge (x = 253 < 256): those windows hold a 3 px strip of the region and must still be predicted."""
    slide = write_slide(
        tmp_path / "strip.tif",
        1600,
        1400,
        discs_content([(253.0, y) for y in range(60, 1400, 150)] + GRID, RADIUS),
        mpp=MPP,
        tile=128,
        min_side=256,
    )
    outline = [[250, 40], [1100, 40], [1100, 1300], [250, 1300], [250, 40]]
    roi = _geojson(tmp_path / "strip.geojson", [_annotation([outline], "tumour")])
    table, info = _predict(slide, tmp_path / "out", roi=roi)
    expected = _inside(outline, [(253.0, float(y)) for y in range(60, 1400, 150)] + GRID)
    assert len(table) == len(expected) == 9 + 5 * 9
    assert info["windows_skipped_by_reason"]["outside the regions"] > 0
    assert info["regions"]["tumour"]["nuclei"] == len(expected)
    assert info["regions"]["tumour"]["area_mm2"] == pytest.approx(850 * 1260 * MPP**2 / 1e6)


def test_a_self_intersecting_outline_keeps_both_lobes_and_says_so(grid_slide, tmp_path, caplog):
    """A bow-tie (an outline drawn across itself): buffer(0) kept one lobe; make_valid keeps both."""
    bowtie = [[200, 200], [800, 800], [800, 200], [200, 800], [200, 200]]
    roi = _geojson(tmp_path / "bowtie.geojson", [_annotation([bowtie], "tumour")])
    with caplog.at_level("WARNING", logger="nucleiseg"):
        table, info = _predict(grid_slide, tmp_path / "out", roi=roi)
    expected = _inside(bowtie, GRID)
    left = [p for p in expected if p[0] < 500]
    right = [p for p in expected if p[0] > 500]
    assert left and right and len(table) == len(expected)
    assert info["regions"]["tumour"]["area_mm2"] == pytest.approx(2 * 0.5 * 600 * 300 * MPP**2 / 1e6, rel=1e-6)
    assert any("repaired" in note for note in info["region_notes"]) and "repaired" in caplog.text


def test_two_annotations_of_one_name_are_two_regions_with_their_own_areas(grid_slide, tmp_path):
    first = [[0, 0], [400, 0], [400, 400], [0, 400], [0, 0]]
    second = [[800, 800], [1400, 800], [1400, 1300], [800, 1300], [800, 800]]
    roi = _geojson(tmp_path / "same.geojson", [_annotation([first], "Tumour"), _annotation([second], "Tumour")])
    table, info = _predict(grid_slide, tmp_path / "out", roi=roi)
    regions = info["regions"]
    assert set(regions) == {"Tumour", "Tumour (2)"}
    assert regions["Tumour"]["nuclei"] == len(_inside(first, GRID))
    assert regions["Tumour (2)"]["nuclei"] == len(_inside(second, GRID))
    assert regions["Tumour"]["area_mm2"] == pytest.approx(400 * 400 * MPP**2 / 1e6)
    assert regions["Tumour (2)"]["area_mm2"] == pytest.approx(600 * 500 * MPP**2 / 1e6)
    for region in regions.values():
        assert region["nuclei_per_mm2"] == pytest.approx(region["nuclei"] / region["area_mm2"])
    assert sorted(set(table["region"])) == ["Tumour", "Tumour (2)"]


def test_a_region_inside_another_counts_its_nuclei_in_both(grid_slide, tmp_path):
    outer = [[0, 0], [1200, 0], [1200, 1200], [0, 1200], [0, 0]]
    inner = [[300, 300], [700, 300], [700, 700], [300, 700], [300, 300]]
    roi = _geojson(tmp_path / "nested.geojson", [_annotation([outer], "tissue"), _annotation([inner], "tumour")])
    table, info = _predict(grid_slide, tmp_path / "out", roi=roi)
    n_outer, n_inner = len(_inside(outer, GRID)), len(_inside(inner, GRID))
    assert info["regions"]["tissue"]["nuclei"] == n_outer and info["regions"]["tumour"]["nuclei"] == n_inner
    assert len(table) == n_outer and list(table["region"]).count("tumour") == n_inner  # the innermost is named
    assert info["regions"]["tumour"]["nuclei_per_mm2"] == pytest.approx(n_inner / (400 * 400 * MPP**2 / 1e6))
    assert any("overlap" in note for note in info["region_notes"])


def test_a_region_partly_off_the_slide_counts_the_area_on_the_slide(grid_slide, tmp_path):
    hanging = [[1000, 1000], [5000, 1000], [5000, 5000], [1000, 5000], [1000, 1000]]  # the slide is 1600 x 1400
    roi = _geojson(tmp_path / "hanging.geojson", [_annotation([hanging], "edge")])
    _, info = _predict(grid_slide, tmp_path / "out", roi=roi)
    region = info["regions"]["edge"]
    assert region["area_mm2"] == pytest.approx(600 * 400 * MPP**2 / 1e6)
    assert region["nuclei"] == len(_inside([[1000, 1000], [1600, 1000], [1600, 1400], [1000, 1400]], GRID))
    assert any("off the slide" in note for note in info["region_notes"])


def test_a_feature_without_geometry_is_skipped_and_named(grid_slide, tmp_path):
    box = [[0, 0], [500, 0], [500, 500], [0, 500], [0, 0]]
    features = [
        {"type": "Feature", "geometry": None, "properties": {"name": "empty"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10, 10]}, "properties": {"name": "dot"}},
        _annotation([box], "tumour"),
    ]
    _, info = _predict(grid_slide, tmp_path / "out", roi=_geojson(tmp_path / "mixed.geojson", features))
    assert info["regions"]["tumour"]["nuclei"] == len(_inside(box, GRID))
    [note] = [n for n in info["region_notes"] if "skipped" in n]
    assert "empty (no geometry)" in note and "dot (Point" in note
