import json
from pathlib import Path

import numpy as np
import pytest

from nucleiseg.data.source import SourceImage, check_types
from nucleiseg.data.typed.folder import find_typed_folder, write_typed_folder
from nucleiseg.util.errors import ConfigError, DatasetLayoutError, ImageReadError

IMAGE = np.full((6, 6, 3), 200, np.uint8)
INSTANCES = np.zeros((6, 6), np.int32)
INSTANCES[:2, :2], INSTANCES[3:, 3:] = 1, 2


def _untyped() -> SourceImage:  # built the way tnbc.py and monuseg.py build theirs, positionally
    return SourceImage(
        "tnbc", "01_1", "slide01", Path("a.png"), Path("a_gt.png"), lambda p: IMAGE, lambda p, s: INSTANCES
    )


def test_untyped_readers_are_unchanged_and_say_they_have_no_classes():
    source = _untyped()
    image, mask = source.load()
    assert np.array_equal(mask, INSTANCES) and source.classes == () and not source.typed
    assert dict(source.metadata) == {} and source.microns_per_pixel is None
    with pytest.raises(ImageReadError, match="tnbc/01_1: tnbc has no nucleus classes"):
        source.load_typed()


def test_typed_source_checks_one_class_per_nucleus():
    types = np.where(INSTANCES == 1, 2, np.where(INSTANCES == 2, 1, 0)).astype(np.int32)
    source = SourceImage(
        "x",
        "n",
        "p",
        Path("i"),
        Path("m"),
        lambda p: IMAGE,
        lambda p, s: INSTANCES,
        0.5,
        ("a", "b"),
        lambda p, s: (INSTANCES, types),
    )
    assert source.typed and np.array_equal(source.load_typed()[2], types)
    mixed = types.copy()
    mixed[0, 0] = 1
    with pytest.raises(ImageReadError, match=r"m: 1 nuclei \(e.g. label 1\) hold more than one class"):
        check_types(INSTANCES, mixed, 2, "m")
    stray = types.copy()
    stray[2, 2] = 1
    with pytest.raises(ImageReadError, match="m: 1 pixels have a class but no nucleus"):
        check_types(INSTANCES, stray, 2, "m")
    with pytest.raises(ImageReadError, match=r"m: class indices 0..2; expected 0..1 \(1 classes\)"):
        check_types(INSTANCES, types, 1, "m")


def test_typed_folder_layout_errors(tmp_path):
    types = np.where(INSTANCES > 0, 1, 0).astype(np.int32)
    out = write_typed_folder(tmp_path / "t", [("a", IMAGE, INSTANCES, types)], ("tumour",), 0.25, "test")
    assert find_typed_folder(out)[0].load_typed()[2].max() == 1
    with pytest.raises(ConfigError, match="exists and is not empty"):
        write_typed_folder(out, [], ("tumour",), 0.25, "test")
    (out / "classes.json").write_text(json.dumps({"classes": ["a", "a"]}))
    with pytest.raises(
        DatasetLayoutError, match="classes.json: \"classes\" is \\['a', 'a'\\]; expected a list of distinct"
    ):
        find_typed_folder(out)
    (out / "types" / "a.tif").unlink()
    (out / "classes.json").write_text(json.dumps({"classes": ["tumour"]}))
    with pytest.raises(DatasetLayoutError, match=r"a.png: no types/a.tif"):
        find_typed_folder(out)
    with pytest.raises(ImageReadError, match="b: 13 pixels have a class but no nucleus"):
        write_typed_folder(tmp_path / "u", [("b", IMAGE, INSTANCES * 0, types)], ("tumour",), None, "test")
    assert not (tmp_path / "u").exists() and not list(tmp_path.glob(".u.partial-*"))
