import hashlib
import json

import numpy as np
import tifffile
from skimage.measure import regionprops

from nucleiseg.data.image_io import read_rgb
from nucleiseg.data.synthetic import (
    TYPED_CLASSES,
    SyntheticSpec,
    TypedSyntheticSpec,
    synthetic_sources,
    synthetic_tile,
    synthetic_typed_tile,
    write_synthetic_folder,
    write_typed_synthetic_folder,
)
from nucleiseg.data.typed.folder import find_typed_folder


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(array.tobytes())
        digest.update(str(array.dtype).encode())
        digest.update(str(array.shape).encode())
    return digest.hexdigest()


# Hashes of the untyped outputs taken before the typed option was added (2026-12): they must never change, the
# project's tests and the quick start's numbers depend on them.
PINNED = [
    (SyntheticSpec(), 0, "451edd5b793f37ca286752a66b6c4ef5268a4870f226d4fb1a05d054a8285390"),
    (SyntheticSpec(96, 96, n_nuclei=15), 3, "32aa5a90159f4aaee37769f5a1aa18be10590dbe2788328fa6c3e25a5dc36831"),
    (
        SyntheticSpec(128, 128, n_nuclei=25, touching_fraction=0.8),
        7,
        "6fd3029dbdf8ae044735ad2b05f2ff39fb95bba30ad74dd6ec626742014145e5",
    ),
    (SyntheticSpec(64, 64, n_nuclei=3), 0, "f1b218b7c89f4371c7ad0ddbf238c054e8c7ce81928572149fb45645e4d8ebd5"),
]


def test_untyped_outputs_are_byte_identical_to_before(tmp_path):
    for spec, seed, expected in PINNED:
        assert _digest(*synthetic_tile(spec, seed)) == expected, (spec, seed)
    source = synthetic_sources("tnbc", [2, 1], SyntheticSpec(96, 96, n_nuclei=10), 0)[1]
    assert _digest(*source.load()) == "f8fcff3d180903102b5640143da24bae9d9a548d52ee0f4d4125642a5afa98fe"
    out = write_synthetic_folder(tmp_path, 2, 64, 1)
    arrays = []
    for k in range(2):
        arrays += [read_rgb(out / "images" / f"synthetic_{k:02d}.png")]
        arrays += [tifffile.imread(out / "masks" / f"synthetic_{k:02d}.tif")]
    digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()
    assert digest == "78588299909774363568925ce18b79c49733072bbdded0cb17bebba19a1fd36a"


def _per_class(seeds: range) -> dict[int, dict[str, list[float]]]:
    spec = TypedSyntheticSpec(128, 128, n_nuclei=20, touching_fraction=0.0)
    stats: dict[int, dict[str, list[float]]] = {k: {"area": [], "grey": [], "elongation": []} for k in (1, 2, 3)}
    for seed in seeds:
        image, instances, types = synthetic_typed_tile(spec, seed)
        for region in regionprops(instances, intensity_image=image.mean(axis=-1)):
            klass = int(types[instances == region.label][0])
            stats[klass]["area"].append(region.area)
            stats[klass]["grey"].append(region.intensity_mean)
            stats[klass]["elongation"].append(region.axis_major_length / max(region.axis_minor_length, 1.0))
    return {k: {name: float(np.mean(v)) for name, v in s.items()} | {"n": len(s["area"])} for k, s in stats.items()}


def test_classes_differ_in_size_shape_and_stain():
    assert [c.name for c in TYPED_CLASSES] == ["tumour", "lymphocyte", "stroma"]
    tumour, lymphocyte, stroma = (_per_class(range(4))[k] for k in (1, 2, 3))
    assert tumour["area"] > 3 * lymphocyte["area"] and tumour["area"] > 3 * stroma["area"]  # large
    assert lymphocyte["grey"] < tumour["grey"] - 30 and lymphocyte["grey"] < stroma["grey"] - 15  # dark
    assert stroma["elongation"] > 2.5 > 1.5 > lymphocyte["elongation"]  # spindles against round cells
    assert tumour["n"] > stroma["n"] and lymphocyte["n"] > stroma["n"]  # shares 0.4 / 0.35 / 0.25


def test_typed_tiles_are_reproducible_and_consistent():
    spec = TypedSyntheticSpec(96, 96, n_nuclei=15)
    first, again = synthetic_typed_tile(spec, 5), synthetic_typed_tile(spec, 5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    image, instances, types = first
    labels = np.unique(instances[instances > 0])
    assert np.array_equal(labels, np.arange(1, labels.size + 1))
    assert np.all(types[instances == 0] == 0) and set(np.unique(types[instances > 0])) <= {1, 2, 3}


def test_typed_folder_trains_like_any_dataset(tmp_path, capsys):
    from nucleiseg.cli import main as cli

    out = write_typed_synthetic_folder(tmp_path / "typed", 2, 64, seed=3)
    record = json.loads((out / "classes.json").read_text())
    assert record["classes"] == ["tumour", "lymphocyte", "stroma"] and record["source"] == "synthetic"
    assert record["colours"]["tumour"] == [220, 40, 40] and record["microns_per_pixel"] is None
    sources = find_typed_folder(out)
    assert [s.name for s in sources] == ["synthetic_00", "synthetic_01"] and sources[0].dataset == "typed-folder"
    spec = TypedSyntheticSpec(64, 64, n_nuclei=3)
    for k, source in enumerate(sources):
        expected = synthetic_typed_tile(spec, 3 * 1_000_003 + k)
        assert all(np.array_equal(a, b) for a, b in zip(source.load_typed(), expected, strict=True))
    assert cli(["data", "synthetic", "--typed", "--to", str(out), "--count", "1"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert cli(["data", "synthetic", "--typed", "--to", str(out), "--count", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["synthetic_00.png"]
    assert not list(tmp_path.glob(".typed*"))  # no scratch or replaced folder left behind
