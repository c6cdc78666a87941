"""``nucleiseg predict`` end to end on synthetic images with touching nuclei."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

import nucleiseg.predict.run as predict_module
from nucleiseg.cli import main as cli
from nucleiseg.config.settings import defaults
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.inference.session import InferenceSession
from nucleiseg.predict.run import OUTPUTS, predict


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
    return InferenceSession.from_checkpoint(trained_run[3], defaults("predict", **options))


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
        label = int(properties["measurements"]["nucleus_id"])
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
    assert (out / "small" / "done.json").is_file() and not (out / "wide").exists()
    assert not (out / ".wide.partial").exists()  # the interrupted image's scratch is cleaned up
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

    from nucleiseg.predict.run import resolve_checkpoint

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
    # cached under the store it came from and the run: cache/runs/<store>/<run>/model.ckpt
    assert downloaded.parent.name == run.info.run_id and downloaded.parents[2] == tmp_path / "cache" / "runs"
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


def _two_inputs_named_alike(tmp_path):
    """``one/x.png`` and ``other/x.png``: two different images under one name."""
    for folder, seed in (("one", 21), ("other", 22)):
        (tmp_path / folder).mkdir()
        image, _ = synthetic_tile(SyntheticSpec(64, 64, n_nuclei=8), seed)
        Image.fromarray(image).save(tmp_path / folder / "x.png")
    return tmp_path / "one" / "x.png", tmp_path / "other" / "x.png"


def test_another_file_under_the_same_name_is_not_taken_for_done(trained_run, tmp_path):
    first, second = _two_inputs_named_alike(tmp_path)
    out, session = tmp_path / "out", _session(trained_run)
    assert predict([first], out, session, progress="none").ok
    summary = predict([second], out, session, progress="none")
    assert not summary.skipped and not summary.ok
    [(name, why)] = summary.not_written
    assert name == "x.png" and "another input" in why and str(first.resolve()) in why
    done = json.loads((out / "x" / "done.json").read_text())
    assert done["input"]["path"] == str(first.resolve())  # still the first image's outputs, untouched
    # the same content under another path is the same input: done
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "x.png").write_bytes(first.read_bytes())
    assert predict([tmp_path / "copy" / "x.png"], out, session, progress="none").skipped == ["x.png"]
    replaced = predict([second], out, session, overwrite=True, progress="none")
    assert replaced.ok and json.loads((out / "x" / "done.json").read_text())["input"]["path"] == str(second.resolve())


def test_overwrite_leaves_exactly_the_new_runs_files(trained_run, tmp_path):
    """A stale file of an earlier run (labels.tif, features.parquet of a run that found nuclei) never survives an
    overwrite, nor appears in done.json; a file nucleiseg did not write is kept."""
    first, _ = _two_inputs_named_alike(tmp_path)
    out, session = tmp_path / "out", _session(trained_run)
    assert predict([first], out, session, progress="none").ok
    (out / "x" / "labels.tif").write_bytes(b"left by a slide run")
    (out / "x" / "features.parquet").write_bytes(b"an earlier table")
    (out / "x" / "notes.txt").write_text("the user's notes")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(first)  # now an image without nuclei
    summary = predict([first], out, session, overwrite=True, progress="none")
    assert summary.done == [("x.png", 0)]
    done = json.loads((out / "x" / "done.json").read_text())
    assert "labels.tif" not in done["outputs"] and not (out / "x" / "labels.tif").exists()
    assert sorted(p.name for p in (out / "x").iterdir()) == sorted([*done["outputs"], "done.json", "notes.txt"])
    assert (out / "x" / "notes.txt").read_text() == "the user's notes"
    assert len((out / "x" / "features.csv").read_text().splitlines()) == 1  # the header: no nucleus
    if (out / "x" / "features.parquet").exists():
        import pandas as pd

        assert len(pd.read_parquet(out / "x" / "features.parquet")) == 0


@pytest.mark.parametrize("compression", ["zlib", "jpeg", "zstd", "packbits"])
def test_a_truncated_tiff_between_good_images_fails_alone(trained_run, inputs, tmp_path, compression):
    image, _ = synthetic_tile(SyntheticSpec(96, 96, n_nuclei=8), 5)
    tifffile.imwrite(inputs / "cut.tif", image, compression=compression, photometric="rgb")
    data = (inputs / "cut.tif").read_bytes()
    (inputs / "cut.tif").write_bytes(data[: len(data) * 2 // 3])
    summary = predict([inputs], tmp_path / "out", _session(trained_run), progress="none")
    assert sorted(name for name, _ in summary.done) == ["small.tif", "wide.png"]
    [(name, reason)] = summary.failed
    assert name.endswith("cut.tif") and "truncated" in reason and "\n" not in reason
    assert not (tmp_path / "out" / "cut").exists()


def test_a_damaged_compressed_tiff_is_one_line(tmp_path):
    from nucleiseg.data.image_io import read_rgb
    from nucleiseg.util.errors import ImageReadError

    image, _ = synthetic_tile(SyntheticSpec(96, 96, n_nuclei=8), 5)
    tifffile.imwrite(tmp_path / "bad.tif", image, compression="zlib", photometric="rgb")
    with tifffile.TiffFile(tmp_path / "bad.tif") as tiff:
        offset = tiff.pages.first.dataoffsets[0]
    data = bytearray((tmp_path / "bad.tif").read_bytes())
    data[offset + 10 : offset + 400] = b"\xff" * 390  # the deflate stream damaged, the file complete
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"bad\.tif: cannot decode the image"):
        read_rgb(tmp_path / "bad.tif")


def test_two_predicts_into_one_folder_are_refused(trained_run, inputs, tmp_path, capsys):
    from nucleiseg.predict.run import LOCK
    from nucleiseg.util.locking import LockedError, exclusive

    out = tmp_path / "out"
    out.mkdir()
    with exclusive(out / LOCK, "the first predict"):
        with pytest.raises(LockedError, match="in use by another process"):
            predict([inputs], out, _session(trained_run), progress="none")
        code = cli(["predict", str(inputs), "--out", str(out), "--checkpoint", str(trained_run[3]), "--quiet"])
    assert code == 2 and "in use by another process (pid" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # the second touched nothing


def test_the_onnxruntime_backend_gives_torchs_probabilities(trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("NUCLEISEG_CACHE", str(tmp_path / "cache"))
    image, _ = synthetic_tile(SyntheticSpec(150, 200, n_nuclei=40), 4)
    torch_session = _session(trained_run, precision="32-true", backend="torch")
    onnx_session = _session(trained_run, precision="32-true", backend="onnxruntime")
    assert onnx_session.describe()["backend"] == "onnxruntime" and torch_session.describe()["backend"] == "torch"
    ours, theirs = torch_session.predict(image), onnx_session.predict(image)
    assert np.abs(ours.probability - theirs.probability).max() < 1e-4
    assert np.array_equal(torch_session.instances(ours), onnx_session.instances(theirs))
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))  # exported once, kept for the next session
    threads = onnx_session.runner.threads
    with onnx_session.network_threads(1):  # as the slide path runs several windows at once
        assert onnx_session.runner.threads == 1
        single = onnx_session.predict(image)
    assert onnx_session.runner.threads == threads
    assert np.array_equal(single.probability, theirs.probability)  # the thread count changes nothing


def test_the_automatic_backend_is_onnx_runtime_in_fp32_for_a_model_file_on_a_cpu(trained_run, tmp_path, monkeypatch):
    """auto: ONNX Runtime (fp32) for a model file on a CPU; PyTorch when bf16 is asked for, when the model is
    only in memory (training's test pass and tuning) or when onnxruntime is not installed."""
    import importlib.util

    from nucleiseg.inference.checkpoint import load_checkpoint

    monkeypatch.setenv("NUCLEISEG_CACHE", str(tmp_path / "cache"))
    automatic = _session(trained_run)
    assert automatic.describe()["backend"] == "onnxruntime" and automatic.describe()["precision"] == "32-true"
    assert _session(trained_run, precision="bf16-mixed").describe()["backend"] == "torch"
    model, hparams = load_checkpoint(trained_run[3])
    assert InferenceSession(model, hparams, defaults("predict")).describe()["backend"] == "torch"
    found = importlib.util.find_spec
    missing = {"onnxruntime"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else found(name, *a))
    assert _session(trained_run).describe()["backend"] == "torch"


def test_a_missing_input_is_said_before_the_model_loads_and_nothing_is_made(tmp_path, capsys, monkeypatch):
    import nucleiseg.cli.predict as predict_cli

    monkeypatch.setattr(predict_cli, "open_session", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    assert cli(["predict", str(tmp_path / "nope.png"), "--out", str(out)]) == 1
    assert "nope.png: no such file or folder" in capsys.readouterr().err and not out.exists()


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    tile = tmp_path / "tile.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tile)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder would go")
    assert cli(["predict", str(tile), "--out", str(blocker / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and f"--out {blocker / 'out'}: cannot write there" in errors[0]


def test_geojson_ids_are_the_same_on_every_run_of_the_same_input(trained_run, inputs, tmp_path):
    for run in ("first", "second"):
        predict([inputs / "wide.png"], tmp_path / run, _session(trained_run), progress="none")
    ids = [
        [f["id"] for f in json.loads((tmp_path / run / "wide" / "nuclei.geojson").read_text())["features"]]
        for run in ("first", "second")
    ]
    assert ids[0] == ids[1] and len(set(ids[0])) == len(ids[0]) > 5
