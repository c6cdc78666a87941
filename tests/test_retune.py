"""``nucleiseg tune-postprocess`` on a finished run: the run's record follows its checkpoint."""

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

import nucleiseg.evaluation.retune as retune_module
from nucleiseg.cli import main as cli
from nucleiseg.config.compose import compose
from nucleiseg.config.settings import defaults
from nucleiseg.evaluation.evaluate import evaluate
from nucleiseg.evaluation.tuning import TuningResult
from nucleiseg.inference.session import InferenceSession
from nucleiseg.postprocess.instances import Postprocess
from nucleiseg.training.identity import run_folder
from nucleiseg.training.run import run


@pytest.fixture
def finished(train_overrides, tracking_uri):
    cfg = compose(train_overrides + ["study=retune", "trainer.max_epochs=1"])
    run(cfg)
    folder = run_folder(cfg)
    return folder, folder / "checkpoints" / "model.ckpt"


def _choose(min_area):
    def fake_tune(session, items, settings, iou_threshold, normalise):
        list(items)
        chosen = Postprocess.merged(session.postprocess.as_dict(), {"min_area": min_area})
        return TuningResult(chosen, session.threshold, settings.objective, 0.5, 0.4, 2)

    return fake_tune


def test_retuning_a_finished_run_rescores_its_test_split(finished, tracking_uri, monkeypatch, capsys):
    folder, checkpoint = finished
    before = json.loads((folder / "done.json").read_text())
    old_area = InferenceSession.from_checkpoint(checkpoint, defaults("predict")).postprocess.min_area
    monkeypatch.setattr(retune_module, "tune", _choose(old_area + 40))  # the search itself is tested elsewhere
    assert cli(["tune-postprocess", "--model", str(checkpoint), f"logger.tracking_uri={tracking_uri}"]) == 0
    session = InferenceSession.from_checkpoint(checkpoint, defaults("predict"))
    assert session.postprocess.min_area == old_area + 40
    done = json.loads((folder / "done.json").read_text())
    rescored = evaluate(session)  # the test split with the values the checkpoint now carries
    for key in ("test/aji_watershed", "test/pq_watershed", "test/n_predicted_nuclei_watershed"):
        assert done["metrics"][key] == pytest.approx(rescored[key])
    assert done["retuned"][0]["replaced"]["postprocess"]["min_area"] == old_area
    assert done["retuned"][0]["test_before"]["test/aji_watershed"] == before["metrics"]["test/aji_watershed"]
    assert f"min_area={old_area + 40}" in (folder / "checkpoints" / "MODEL_CARD.md").read_text()
    record = MlflowClient(tracking_uri).get_run(done["run_id"]).data
    assert record.tags["tuned.min_area"] == str(old_area + 40) and "tuned.retuned" in record.tags
    assert record.metrics["test/aji_watershed"] == pytest.approx(done["metrics"]["test/aji_watershed"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["test"]["test/aji_watershed"] == pytest.approx(done["metrics"]["test/aji_watershed"])


def test_a_run_whose_test_split_is_gone_is_left_as_it_is(finished, tracking_uri, monkeypatch, tmp_path, capsys):
    """The prepared data moved: validation is found where the user points (data.prepared_root), but the run's
    test split cannot be scored again, so nothing changes; --out writes the re-tuned model to a new file."""
    from pathlib import Path

    folder, checkpoint = finished
    session = InferenceSession.from_checkpoint(checkpoint, defaults("predict"))
    data_folder = Path(session.hparams["data"]["folder"])
    monkeypatch.setattr(retune_module, "tune", _choose(session.postprocess.min_area + 40))
    elsewhere = tmp_path / "elsewhere"
    shutil.move(data_folder, elsewhere / data_folder.name)
    original_bytes, original_done = checkpoint.read_bytes(), (folder / "done.json").read_text()
    words = [
        "tune-postprocess",
        str(checkpoint),
        f"logger.tracking_uri={tracking_uri}",
        "experiment=quickstart",
        "data.sources.synthetic.tile_size=48",
        "data.protocol.image_size=32",
        f"data.prepared_root={elsewhere}",
    ]
    assert cli(words) == 2
    assert "--out NEW.ckpt" in capsys.readouterr().err
    assert checkpoint.read_bytes() == original_bytes and (folder / "done.json").read_text() == original_done
    out = tmp_path / "retuned.ckpt"
    assert cli([*words, "--out", str(out), "--no-mlflow"]) == 0
    assert checkpoint.read_bytes() == original_bytes and (folder / "done.json").read_text() == original_done
    assert (
        InferenceSession.from_checkpoint(out, defaults("predict")).postprocess.min_area
        == session.postprocess.min_area + 40
    )
    assert cli([*words, "--out", str(out), "--no-mlflow"]) == 2  # never over an existing file
