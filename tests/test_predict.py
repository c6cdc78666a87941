"""``nucleiseg predict`` end to end on synthetic images with touching nuclei."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

import nucleiseg.predict as predict_module
from nucleiseg.cli import main as cli
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.inference.session import InferenceSession, InferenceSettings
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


def _session(trained_run, **settings):
    options = {"tile_size": 64, "microns_per_pixel": 0.25, "scale": 1.0, **settings}
    return InferenceSession.from_checkpoint(trained_run[3], InferenceSettings(**options))


def test_predict_writes_every_output(trained_run, inputs, tmp_path, caplog):
    summary = predict([inputs], tmp_path / "out", _session(trained_run), progress="none")
    assert "trained on synthetic tiles" in caplog.text  # the fixture's model is a smoke-test model
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


def test_geojson_is_what_qupath_imports_and_outlines_are_exact(trained_run, inputs, tmp_path):
    import uuid

    import shapely
    from shapely.geometry import shape

    predict([inputs / "wide.png"], tmp_path / "out", _session(trained_run), progress="none")
    collection = json.loads((tmp_path / "out" / "wide" / "nuclei.geojson").read_text())
    instances = tifffile.imread(tmp_path / "out" / "wide" / "instances.tif")
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == instances.max()  # one feature per instance
    assert len({uuid.UUID(f["id"]) for f in features}) == len(features)  # UUIDs: QuPath keeps them as object ids
    rows, cols = np.mgrid[: instances.shape[0], : instances.shape[1]]
    for feature in features:
        assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        assert properties["classification"]["name"] == "Nucleus" and len(properties["classification"]["color"]) == 3
        label = int(properties["measurements"]["instance_id"])
        # QuPath's pixel convention: pixel (x, y) is the square [x, x+1] x [y, y+1]; the outline encloses exactly
        # the nucleus's pixel centres
        inside = shapely.contains_xy(shape(feature["geometry"]), cols + 0.5, rows + 0.5)
        assert np.array_equal(inside, instances == label)
        assert properties["measurements"]["area_px"] == (instances == label).sum()


def test_small_nuclei_keep_their_exact_outline():
    import shapely
    from shapely.geometry import shape

    from nucleiseg.inference.export import geojson_nuclei

    labels = np.zeros((12, 12), np.int32)
    labels[2:5, 2:5] = 1  # 3 x 3
    labels[8, 8] = 2  # one pixel
    labels[6, 2], labels[7, 3] = 3, 3  # two pixels touching at a corner
    rows, cols = np.mgrid[:12, :12]
    features = geojson_nuclei(labels, offset=(100.0, 50.0))["features"]
    assert len(features) == 3
    for feature, label in zip(features, (1, 2, 3), strict=True):
        geometry = shape(feature["geometry"])
        inside = shapely.contains_xy(geometry, cols + 100.5, rows + 50.5)
        assert np.array_equal(inside, labels == label) and geometry.area == (labels == label).sum()
    assert shape(features[0]["geometry"]).bounds == (102.0, 52.0, 105.0, 55.0)


def test_interruption_then_resume_leaves_one_complete_set(trained_run, inputs, tmp_path, monkeypatch):
    session, out = _session(trained_run), tmp_path / "out"
    original = predict_module.write_features
    calls = {"n": 0}

    def crash_on_second_image(frame, path, parquet=True):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C while the second image was being written
        return original(frame, path, parquet)

    monkeypatch.setattr(predict_module, "write_features", crash_on_second_image)
    with pytest.raises(KeyboardInterrupt):
        predict([inputs], out, session, progress="none")
    assert (out / "small" / "done.json").is_file() and not (out / "wide" / "done.json").exists()
    assert (out / "wide" / ".in_progress").exists()
    first_done = (out / "small" / "done.json").read_text()

    monkeypatch.setattr(predict_module, "write_features", original)
    summary = predict([inputs], out, session, progress="none")
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
        ]
    )
    assert code == 1
    printed = capsys.readouterr().out
    assert "broken.png" in printed and "nowhere.png" in printed and "failed" in printed
    assert (tmp_path / "out" / "wide" / "done.json").is_file() and not (tmp_path / "out" / "broken").exists()


def test_existing_outputs_are_not_overwritten_without_asking(trained_run, inputs, tmp_path):
    session, out = _session(trained_run), tmp_path / "out"
    (out / "wide").mkdir(parents=True)
    (out / "wide" / "mask.png").write_bytes(b"the user's own file")
    summary = predict([inputs / "wide.png"], out, session, progress="none")
    assert [name for name, _ in summary.not_written] == ["wide.png"] and not summary.ok
    assert (out / "wide" / "mask.png").read_bytes() == b"the user's own file"
    summary = predict([inputs / "wide.png"], out, session, overwrite=True, progress="none")
    assert summary.ok and (out / "wide" / "mask.png").read_bytes() != b"the user's own file"


def test_checkpoint_from_an_mlflow_run_id_works_from_another_machine(
    trained_run, inputs, tmp_path, tracking_uri, monkeypatch
):
    """The run's checkpoint is an MLflow artifact: with the training machine's file gone (another machine),
    --run-id downloads it into the cache once."""
    from mlflow.tracking import MlflowClient

    from nucleiseg.predict import resolve_checkpoint

    client = MlflowClient(tracking_uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name("evaluated").experiment_id], filter_string="tags.checkpoint != ''"
    )
    assert resolve_checkpoint(None, run.info.run_id, tracking_uri) == trained_run[3]  # here: the local file
    client.set_tag(run.info.run_id, "checkpoint", str(tmp_path / "elsewhere" / "model.ckpt"))
    monkeypatch.setenv("NUCLEISEG_CACHE", str(tmp_path / "cache"))
    try:
        downloaded = resolve_checkpoint(None, run.info.run_id, tracking_uri)
    finally:
        client.set_tag(run.info.run_id, "checkpoint", str(trained_run[3]))
    assert downloaded == tmp_path / "cache" / "runs" / run.info.run_id / "model.ckpt"
    assert downloaded.read_bytes() == trained_run[3].read_bytes()
    code = cli(
        [
            "predict",
            str(inputs / "small.tif"),
            "--out",
            str(tmp_path / "out"),
            "--run-id",
            run.info.run_id,
            "--quiet",
            f"logger.tracking_uri={tracking_uri}",
        ]
    )
    assert code == 0 and (tmp_path / "out" / "small" / "done.json").is_file()
    with pytest.raises(ValueError, match="exactly one"):
        resolve_checkpoint(None, None, tracking_uri)
    with pytest.raises(ValueError, match="no such MLflow run"):
        resolve_checkpoint(None, "0" * 32, tracking_uri)


def test_outputs_of_another_model_or_settings_are_not_taken_for_done(trained_run, inputs, tmp_path):
    out = tmp_path / "out"
    assert predict([inputs / "small.tif"], out, _session(trained_run), progress="none").ok
    again = predict([inputs / "small.tif"], out, _session(trained_run), progress="none")
    assert again.skipped == ["small.tif"]
    with_tta = predict([inputs / "small.tif"], out, _session(trained_run, tta=True), progress="none")
    assert with_tta.not_written == [("small.tif", "made by another model or other settings")] and not with_tta.ok


def test_watershed_separates_predicted_touching_nuclei(trained_run, tmp_path):
    """On synthetic tiles with touching nuclei, watershed finds more of the true nuclei than components."""
    session = _session(trained_run)
    found = {"components": 0, "watershed": 0}
    truth_total = 0
    for seed in range(3):
        image, truth = synthetic_tile(SyntheticSpec(128, 128, n_nuclei=25, touching_fraction=0.6), 40 + seed)
        prediction = session.predict(image)
        truth_total += truth.max()
        for method in found:
            found[method] += session.instances(prediction, method).max()
    assert found["components"] < found["watershed"] <= truth_total * 1.2
