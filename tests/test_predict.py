"""``nucleiseg predict`` end to end on synthetic images with touching nuclei."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

import nucleiseg.predict as predict_module
from nucleiseg.cli import main as cli
from nucleiseg.config import compose
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.predict import OUTPUTS, predict


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    big, _ = synthetic_tile(SyntheticSpec(150, 200, n_nuclei=40, touching_fraction=0.5), 11)  # tiled at 64
    Image.fromarray(big).save(folder / "wide.png")
    small, _ = synthetic_tile(SyntheticSpec(64, 64, n_nuclei=8), 12)
    tifffile.imwrite(folder / "small.tif", small)
    return folder


def _cfg(trained_run):
    cfg, overrides, _, _ = trained_run
    return compose(overrides + ["predict.tile_size=64", "predict.microns_per_pixel=0.25"])


def test_predict_writes_every_output(trained_run, inputs, tmp_path):
    checkpoint = trained_run[3]
    summary = predict([inputs], tmp_path / "out", _cfg(trained_run), checkpoint=str(checkpoint), show_progress=False)
    assert summary.ok and len(summary.done) == 2
    folder = tmp_path / "out" / "wide"
    for name in OUTPUTS + ("done.json",):
        assert (folder / name).is_file(), name
    probability = tifffile.imread(folder / "probability.tif")
    instances = tifffile.imread(folder / "instances.tif")
    mask = np.asarray(Image.open(folder / "mask.png"))
    assert probability.shape == instances.shape == mask.shape == (150, 200)
    assert probability.dtype == np.float32 and instances.dtype == np.int32 and set(np.unique(mask)) <= {0, 255}
    n = json.loads((folder / "done.json").read_text())["n_nuclei"]
    assert n == instances.max() > 5 and dict(summary.done)["wide.png"] == n
    features = (folder / "features.csv").read_text().splitlines()
    assert len(features) == n + 1 and "area_um2" in features[0]
    assert np.asarray(Image.open(folder / "overlay.png")).shape == (150, 200, 3)
    assert not list((tmp_path / "out").rglob("*.tmp")) and not list((tmp_path / "out").rglob(".in_progress"))


def test_geojson_is_valid_for_qupath(trained_run, inputs, tmp_path):
    predict(
        [inputs / "wide.png"], tmp_path / "out", _cfg(trained_run), checkpoint=str(trained_run[3]), show_progress=False
    )
    collection = json.loads((tmp_path / "out" / "wide" / "nuclei.geojson").read_text())
    instances = tifffile.imread(tmp_path / "out" / "wide" / "instances.tif")
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == instances.max()  # one feature per instance
    assert len({f["properties"]["instance_id"] for f in features}) == len(features)
    for feature in features:
        assert feature["geometry"]["type"] == "Polygon"
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert len(ring) >= 4 and np.array_equal(ring[0], ring[-1])  # closed linear ring
        area = 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
        assert area > 0  # counter-clockwise, non-degenerate
        assert ring[:, 0].min() >= -0.5 and ring[:, 0].max() <= 200 and ring[:, 1].max() <= 150
        assert feature["properties"]["objectType"] == "detection"
        assert feature["properties"]["classification"]["name"] == "Nucleus"
        label = feature["properties"]["instance_id"]
        ys, xs = np.nonzero(instances == label)
        assert ring[:, 0].min() <= xs.min() + 1 and ring[:, 0].max() >= xs.max() - 1  # outline encloses it
        assert "area_px" in feature["properties"]["measurements"]


def test_interruption_then_resume_leaves_one_complete_set(trained_run, inputs, tmp_path, monkeypatch):
    cfg, out = _cfg(trained_run), tmp_path / "out"
    original = predict_module.write_features
    calls = {"n": 0}

    def crash_on_second_image(frame, path, parquet=True):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C while the second image was being written
        return original(frame, path, parquet)

    monkeypatch.setattr(predict_module, "write_features", crash_on_second_image)
    with pytest.raises(KeyboardInterrupt):
        predict([inputs], out, cfg, checkpoint=str(trained_run[3]), show_progress=False)
    assert (out / "small" / "done.json").is_file() and not (out / "wide" / "done.json").exists()
    assert (out / "wide" / ".in_progress").exists()
    first_done = (out / "small" / "done.json").read_text()

    monkeypatch.setattr(predict_module, "write_features", original)
    summary = predict([inputs], out, cfg, checkpoint=str(trained_run[3]), show_progress=False)
    assert summary.ok and summary.skipped == ["small.tif"] and [name for name, _ in summary.done] == ["wide.png"]
    assert (out / "small" / "done.json").read_text() == first_done  # untouched
    for image in ("small", "wide"):
        names = sorted(p.name for p in (out / image).iterdir())
        assert names == sorted(
            [*OUTPUTS, "done.json", *(["features.parquet"] if (out / image / "features.parquet").exists() else [])]
        )


def test_unreadable_input_is_reported_and_skipped(trained_run, inputs, tmp_path, capsys):
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    code = cli(
        [
            "predict",
            str(inputs),
            str(tmp_path / "nowhere.png"),
            "--out",
            str(tmp_path / "out"),
            "--checkpoint",
            str(trained_run[3]),
            "--tile-size",
            "64",
            "--quiet",
            *[f"--set={o}" for o in trained_run[1]],
        ]
    )
    assert code == 1
    printed = capsys.readouterr().out
    assert "broken.png" in printed and "nowhere.png" in printed and "failed" in printed
    assert (tmp_path / "out" / "wide" / "done.json").is_file() and not (tmp_path / "out" / "broken").exists()


def test_existing_outputs_are_not_overwritten_without_asking(trained_run, inputs, tmp_path):
    cfg, out = _cfg(trained_run), tmp_path / "out"
    (out / "wide").mkdir(parents=True)
    (out / "wide" / "mask.png").write_bytes(b"the user's own file")
    summary = predict([inputs / "wide.png"], out, cfg, checkpoint=str(trained_run[3]), show_progress=False)
    assert summary.not_written == ["wide.png"] and not summary.ok
    assert (out / "wide" / "mask.png").read_bytes() == b"the user's own file"
    summary = predict(
        [inputs / "wide.png"], out, cfg, checkpoint=str(trained_run[3]), overwrite=True, show_progress=False
    )
    assert summary.ok and (out / "wide" / "mask.png").read_bytes() != b"the user's own file"


def test_checkpoint_from_an_mlflow_run_id(trained_run, inputs, tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("evaluated").experiment_id], filter_string="tags.checkpoint != ''"
    )
    summary = predict(
        [inputs / "small.tif"], tmp_path / "out", _cfg(trained_run), run_id=runs[0].info.run_id, show_progress=False
    )
    assert summary.ok and summary.done[0][0] == "small.tif"
    with pytest.raises(ValueError, match="exactly one"):
        predict([inputs], tmp_path / "o", _cfg(trained_run), show_progress=False)


def test_watershed_separates_predicted_touching_nuclei(trained_run, tmp_path):
    """On synthetic tiles with touching nuclei, watershed finds more of the true nuclei than components."""
    from nucleiseg.inference.checkpoint import load_checkpoint
    from nucleiseg.inference.tiling import Segmenter
    from nucleiseg.postprocess.instances import separate_instances

    model, _ = load_checkpoint(trained_run[3])
    segmenter = Segmenter(model, tile_size=64)
    found = {"components": 0, "watershed": 0}
    truth_total = 0
    for seed in range(3):
        image, truth = synthetic_tile(SyntheticSpec(128, 128, n_nuclei=25, touching_fraction=0.6), 40 + seed)
        probability = segmenter.probability(image)
        truth_total += truth.max()
        for method in found:
            found[method] += separate_instances(probability, 0.5, method).max()
    assert found["components"] < found["watershed"] <= truth_total * 1.2
