import json

import numpy as np
import pytest
from PIL import Image

from nucleiseg.data.synthetic import TYPED_CLASSES, TypedSyntheticSpec, synthetic_typed_tile
from nucleiseg.data.typed.folder import find_typed_folder
from nucleiseg.data.typed.qupath import RARE_CLASS_OBJECTS, from_qupath
from nucleiseg.inference.export import instance_polygons
from nucleiseg.util.errors import ConfigError


def _square(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def _feature(geometry, name=None, **classification):
    properties = {"objectType": "detection"}
    if name is not None:
        properties["classification"] = {"name": name, **classification}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


# the second image's objects, as QuPath writes them: a plain list of Features
SECOND = [
    _feature(_square(2, 2, 8, 8), "tumour"),  # 36 px
    _feature(_square(12, 2, 16, 6), "lymphocyte"),
    _feature(_square(20, 2, 24, 6)),  # unclassified
    _feature(_square(30, 30, 40, 40), "tumour"),  # overlaps the next: the smaller keeps the shared pixels
    _feature(_square(36, 36, 42, 42), "lymphocyte"),
    _feature(
        {
            "type": "MultiPolygon",
            "coordinates": [_square(2, 20, 4, 22)["coordinates"], _square(6, 20, 8, 22)["coordinates"]],
        },
        "neutrophil",
        colorRGB=-32768,  # QuPath 0.2-0.3 packed ARGB: (255, 128, 0)
    ),
    _feature({"type": "Point", "coordinates": [50, 50]}, "tumour"),
    _feature({"type": "Point", "coordinates": [51, 52]}, "tumour"),
    _feature({"type": "LineString", "coordinates": [[1, 60], [20, 60]]}, "tumour"),
    _feature(_square(100, 100, 110, 110), "tumour"),  # outside the 64 x 64 image
    _feature(_square(0, 0, 64, 64), "Tissue"),  # the region drawn around the nuclei
    _feature(_square(60, 10, 70, 16), "lymphocyte"),  # cut by the image edge
    _feature({"type": "Polygon", "coordinates": [[[50.1, 50.1], [50.3, 50.1], [50.1, 50.3], [50.1, 50.1]]]}, "tumour"),
    _feature({"type": "Polygon", "coordinates": [[[44, 2], [50, 8], [50, 2], [44, 8], [44, 2]]]}, "tumour"),  # bowtie
]


@pytest.fixture
def exports(tmp_path):
    """images/{tile,second,lonely}.png; the tile's GeoJSON in exports/ (a FeatureCollection), the second's beside
    its image as second.png.geojson (a list of Features), a GeoJSON of no image."""
    images, exported = tmp_path / "images", tmp_path / "exports"
    images.mkdir()
    exported.mkdir()
    image, instances, types = synthetic_typed_tile(TypedSyntheticSpec(96, 96, n_nuclei=14), 11)
    Image.fromarray(image).save(images / "tile.png")
    names = [c.name for c in TYPED_CLASSES]
    colours = {c.name: list(c.colour) for c in TYPED_CLASSES}
    features = []
    for label, geometry in instance_polygons(instances).items():
        name = names[int(types[instances == label][0]) - 1]
        features.append(_feature(geometry, name, color=colours[name]))
    (exported / "tile.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (exported / "ghost.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    Image.fromarray(np.full((64, 64, 3), 220, np.uint8)).save(images / "second.png")
    (images / "second.png.geojson").write_text(json.dumps(SECOND))
    Image.fromarray(np.full((32, 32, 3), 220, np.uint8)).save(images / "lonely.png")
    return tmp_path, image, instances, types


def test_round_trip_gives_back_instances_and_classes(exports):
    root, image, instances, types = exports
    report = from_qupath(root / "images", [root / "exports"], root / "typed", microns_per_pixel=0.5)
    assert report["classes"] == ["lymphocyte", "neutrophil", "stroma", "tumour"]  # "Tissue" named only a region
    sources = {s.name: s for s in find_typed_folder(root / "typed")}
    assert sorted(sources) == ["second", "tile"] and sources["tile"].microns_per_pixel == 0.5
    loaded_image, loaded_instances, loaded_types = sources["tile"].load_typed()
    assert np.array_equal(loaded_image, image) and np.array_equal(loaded_instances, instances)
    names = ["", *(c.name for c in TYPED_CLASSES)]
    classes = ["", *sources["tile"].classes]
    assert np.array_equal(np.array(classes)[loaded_types], np.array(names)[types])
    record = json.loads((root / "typed" / "classes.json").read_text())
    assert record["source"] == "qupath" and record["colours"]["neutrophil"] == [255, 128, 0]
    assert record["colours"]["stroma"] == [40, 80, 220]
    assert json.loads((root / "typed" / "report.json").read_text()) == report


def test_report_counts_every_object_that_was_not_a_plain_nucleus(exports):
    root, _, instances, types = exports
    report = from_qupath(root / "images", [root / "exports"], root / "typed")
    second = report["per_image"]["second"]
    assert second == {
        "objects": 14,
        "nuclei": 8,
        "regions": 1,
        "non_polygon": {"Point": 2, "LineString": 1},
        "outside_image": 1,
        "no_pixel": 1,
        "clipped": 1,
        "overlapping": 2,
        "covered": 0,
        "unclassified": 1,
        "per_class": {"lymphocyte": 3, "neutrophil": 1, "tumour": 3},
    }
    per_tile = {c.name: len(np.unique(instances[types == k])) for k, c in enumerate(TYPED_CLASSES, 1)}
    assert report["per_image"]["tile"]["per_class"] == {k: v for k, v in per_tile.items() if v}
    assert report["per_image"]["tile"]["nuclei"] == instances.max() == sum(per_tile.values())
    expected = {
        "lymphocyte": 3 + per_tile["lymphocyte"],
        "neutrophil": 1,
        "stroma": per_tile["stroma"],
        "tumour": 3 + per_tile["tumour"],
    }
    assert report["per_class"] == expected
    assert report["rare_classes"] == {k: v for k, v in expected.items() if v < RARE_CLASS_OBJECTS}
    assert report["images_without_geojson"] == ["lonely.png"] and report["geojson_without_image"] == ["ghost.geojson"]
    assert report["unclassified"] == 1 and report["overlapping"] == 2 and report["non_polygon"]["Point"] == 2
    _, loaded, loaded_types = next(s for s in find_typed_folder(root / "typed") if s.name == "second").load_typed()
    tumour, lymphocyte = 4, 1
    assert np.count_nonzero(loaded == loaded[5, 5]) == 36 and loaded_types[5, 5] == tumour
    assert loaded_types[38, 38] == lymphocyte and loaded_types[32, 32] == tumour  # the smaller keeps the overlap
    assert loaded[4, 22] > 0 and loaded[4, 22] != loaded[10, 22] and loaded_types[4, 22] == 0  # unclassified: 0


def test_cli_prints_the_report_and_never_overwrites(exports, capsys):
    from nucleiseg.cli import main as cli

    root = exports[0]
    words = ["data", "from-qupath", str(root / "images"), str(root / "exports"), "--to", str(root / "typed")]
    assert cli([*words, "--mpp", "0.25"]) == 0
    out = capsys.readouterr().out
    assert (
        "nuclei of 4 classes written" in out and "2 Point objects left out (points cannot be used as outlines)" in out
    )
    assert "1 nuclei without a class" in out and "1 GeoJSONs without an image (left out): ghost.geojson" in out
    before = (root / "typed" / "classes.json").read_bytes()
    assert cli(words) == 2 and "exists and is not empty" in capsys.readouterr().err
    assert (root / "typed" / "classes.json").read_bytes() == before
    assert cli([*words, "--overwrite"]) == 0 and "pixel size unknown: give --mpp" in capsys.readouterr().out
    assert json.loads((root / "typed" / "classes.json").read_text())["microns_per_pixel"] is None


def test_slides_and_unpaired_folders_are_refused(tmp_path):
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "biopsy.svs").write_bytes(b"II*\x00")
    with pytest.raises(ConfigError, match="biopsy.svs: whole-slide images are not supported by from-qupath yet"):
        from_qupath(tmp_path / "slides", [], tmp_path / "out")
    (tmp_path / "tiles").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "tiles" / "a.png")
    with pytest.raises(ConfigError, match=r"no image has a GeoJSON of the same name \(images without one: \['a.png'\]"):
        from_qupath(tmp_path / "tiles", [], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_export_in_slide_coordinates_is_refused_not_written_empty(tmp_path):
    (tmp_path / "tiles").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "tiles" / "crop.png")
    far = [_feature(_square(5000 + 10 * k, 7000, 5006 + 10 * k, 7006), "tumour") for k in range(3)]
    (tmp_path / "tiles" / "crop.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": far}))
    with pytest.raises(ConfigError, match="crop.geojson: all 3 outlines lie outside the 32x32 image crop.png"):
        from_qupath(tmp_path / "tiles", [], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
