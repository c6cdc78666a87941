"""Training runs on synthetic data: MLflow contents, determinism, resume, failure handling."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

import nucleiseg.models.lit_module as lit_module
import nucleiseg.models.losses as losses
from nucleiseg.config.compose import compose
from nucleiseg.training.identity import run_folder
from nucleiseg.training.run import main, run
from nucleiseg.util.errors import ConfigError, NucleisegError
from tests.conftest import fast_run_overrides


def _client(uri) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def _runs(uri, study):
    experiment = _client(uri).get_experiment_by_name(study)
    return [] if experiment is None else _client(uri).search_runs([experiment.experiment_id])


def test_a_run_trains_tests_and_records_everything(train_overrides, tracking_uri):
    cfg = compose(train_overrides + ["study=record", "trainer.max_epochs=2"])
    metrics = run(cfg)
    assert metrics["test/images_per_second"] > 0 and 0 <= metrics["test/jaccard_image_mean"] <= 1
    for key in ("test/jaccard", "test/f1", "test/recall", "test/precision", "test/accuracy", "loss/test"):
        assert 0.0 <= metrics[key] <= (1.0 if key != "loss/test" else 10.0)
    for key in ("aji", "aji_plus", "pq", "dq", "sq", "object_f1"):
        assert 0.0 <= metrics[f"test/{key}_watershed"] <= 1.0
    folder = run_folder(cfg)
    # a finished run keeps one weights-only checkpoint, with the tuned post-processing
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["MODEL_CARD.md", "model.ckpt"]
    card = (folder / "checkpoints" / "MODEL_CARD.md").read_text()
    assert "Modified U-Net (BatchNorm), head `binary`" in card and "Do not use it on real images" in card
    assert f"| test/jaccard | {metrics['test/jaccard']:.4f} |" in card
    saved = torch.load(folder / "checkpoints" / "model.ckpt", weights_only=True)
    assert "optimizer_states" not in saved and set(saved) == {
        "state_dict",
        "hyper_parameters",
        "nucleiseg_model_checkpoint",
    }
    assert saved["hyper_parameters"]["postprocess_tuned_on"] == "val"
    assert saved["hyper_parameters"]["data"]["folder"] and saved["hyper_parameters"]["head"] == "binary"
    done = json.loads((folder / "done.json").read_text())
    [record] = _runs(tracking_uri, "record")
    assert record.info.status == "FINISHED" and record.info.run_id == done["run_id"]
    tags = record.data.tags
    assert tags["encoder"] == "unet_bn" and tags["pretrained"] == "false" and tags["seed"] == "0"
    assert len(tags["data_manifest_hash"]) == 64 and tags["device"].startswith("cpu") and tags["git_commit"]
    assert tags["speed.image_size"] == "32" and tags["speed.batch_size"] == "3"
    assert tags["tuned.on"] == "val" and tags["tuned.min_distance"] == str(
        saved["hyper_parameters"]["postprocess"]["min_distance"]
    )
    assert record.data.metrics["val/aji_tuned"] >= record.data.metrics["val/aji_untuned"]
    assert record.data.params["optimizer.lr"] == "0.0001" and record.data.params["loss.smooth"] == "1.0"
    assert record.data.metrics["test/jaccard"] == pytest.approx(metrics["test/jaccard"])
    client = _client(tracking_uri)
    assert [m.step for m in client.get_metric_history(record.info.run_id, "loss/train")] == [0, 1]
    assert [m.step for m in client.get_metric_history(record.info.run_id, "loss/val")] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(record.info.run_id)}
    assert {"config.yaml", "data_manifest.json", "overlays", "checkpoint"} <= artifacts
    assert len(client.list_artifacts(record.info.run_id, "overlays")) == 1
    stored = {a.path: a.file_size for a in client.list_artifacts(record.info.run_id, "checkpoint")}
    assert stored["checkpoint/model.ckpt"] == (folder / "checkpoints" / "model.ckpt").stat().st_size
    assert "checkpoint/MODEL_CARD.md" in stored


def test_same_seed_gives_the_same_loss_curve(train_overrides, tracking_uri):
    curves = []
    for study in ("det_a", "det_b"):
        run(compose(train_overrides + [f"study={study}", "trainer.max_epochs=2", "seed=3"]))
        [record] = _runs(tracking_uri, study)
        curves.append([m.value for m in _client(tracking_uri).get_metric_history(record.info.run_id, "loss/train")])
    assert curves[0] == curves[1] and len(curves[0]) == 2
    run(compose(train_overrides + ["study=det_c", "trainer.max_epochs=2", "seed=4"]))
    [other] = _runs(tracking_uri, "det_c")
    assert [m.value for m in _client(tracking_uri).get_metric_history(other.info.run_id, "loss/train")] != curves[0]


def test_finished_runs_are_skipped_and_killed_runs_resume_into_the_same_mlflow_run(
    train_overrides, tracking_uri, monkeypatch
):
    cfg = compose(train_overrides + ["study=resume", "trainer.max_epochs=3"])
    original = lit_module.SegmentationModule.on_train_epoch_end

    def killed_in_epoch_two(self):
        original(self)
        if self.current_epoch == 1:
            raise KeyboardInterrupt  # as if the job were killed after epoch 2's checkpoint... before it

    monkeypatch.setattr(lit_module.SegmentationModule, "on_train_epoch_end", killed_in_epoch_two)
    with pytest.raises(SystemExit) as exit_info:  # Ctrl-C: recorded, exit code 130
        main(cfg)
    assert exit_info.value.code == 130
    [killed] = _runs(tracking_uri, "resume")
    assert killed.info.status in ("FAILED", "KILLED")
    assert torch.load(run_folder(cfg) / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0

    monkeypatch.setattr(lit_module.SegmentationModule, "on_train_epoch_end", original)
    metrics = run(cfg)
    [resumed] = _runs(tracking_uri, "resume")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in _client(tracking_uri).get_metric_history(resumed.info.run_id, "loss/train")]
    assert sorted(set(steps)) == [0, 1, 2]

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(lit_module.SegmentationModule, "training_step", must_not_train)
    assert run(cfg) == metrics
    assert len(_runs(tracking_uri, "resume")) == 1


def test_nan_loss_stops_the_run_marks_it_failed_and_keeps_the_last_good_checkpoint(
    train_overrides, tracking_uri, monkeypatch
):
    cfg = compose(train_overrides + ["study=nanloss", "trainer.max_epochs=3"])
    original = losses.BCEDiceLoss.forward

    def nan_in_second_epoch(self, logits, target):
        out = original(self, logits, target)
        if self.training and torch.is_grad_enabled() and getattr(self, "_calls", 0) >= 10:
            out["loss"] = out["loss"] * float("nan")
        self._calls = getattr(self, "_calls", 0) + 1
        return out

    monkeypatch.setattr(losses.BCEDiceLoss, "forward", nan_in_second_epoch)
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 2
    [record] = _runs(tracking_uri, "nanloss")
    assert record.info.status == "FAILED"
    assert "non-finite training loss" in record.data.tags["failure_reason"]
    checkpoint = run_folder(cfg) / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    state = torch.load(checkpoint, weights_only=False)
    assert state["epoch"] == 0 and all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


def test_cuda_out_of_memory_suggests_a_smaller_batch(train_overrides, monkeypatch):
    import lightning

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(lightning.Trainer, "fit", out_of_memory)
    with pytest.raises(NucleisegError, match="batch_size.*bf16-mixed"):
        run(compose(train_overrides + ["study=oom"]))


def test_wrong_overrides_fail_before_any_work(train_overrides, tmp_path):
    with pytest.raises(ConfigError, match="encodr"):
        compose(train_overrides + ["encodr=unet"])
    with pytest.raises(ConfigError, match="not a known encoder"):
        run(compose(train_overrides + ["encoder=unet_xl"]))
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        run(compose(train_overrides + ["encoder=unet", "pretrained=true"]))
    with pytest.raises(ConfigError, match="trainer.precision"):
        run(compose(train_overrides + ["trainer.precision=fp8"]))
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "data").exists()


def test_defaults_reproduce_the_paper():
    cfg = compose([])
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-4
    assert cfg.data.loader.batch_size == 3 and cfg.trainer.max_epochs == 20
    assert cfg.loss.smooth == 1.0 and cfg.threshold == 0.5 and cfg.data.protocol.image_size == 512
    assert list(cfg.data.protocol.augment) == ["hflip", "vflip", "rotate45"] and cfg.data.protocol.n_test == 25


def test_stain_normalisation_travels_from_prepare_to_the_checkpoint(train_overrides, tmp_path):
    import numpy as np
    from PIL import Image

    from nucleiseg.data.prepare import load_manifest, prepared_path
    from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
    from nucleiseg.inference.checkpoint import load_checkpoint

    reference, _ = synthetic_tile(SyntheticSpec(96, 96, n_nuclei=20), 99)
    Image.fromarray(reference).save(tmp_path / "reference.png")
    cfg = compose(
        train_overrides
        + ["study=stained", "data.stain.method=reinhard", f"data.stain.reference={tmp_path / 'reference.png'}"]
    )
    run(cfg)
    manifest = load_manifest(prepared_path(cfg.data))
    assert manifest["stain"]["method"] == "reinhard" and len(manifest["stain"]["params"]["target_means"]) == 3
    checkpoint = run_folder(cfg) / "checkpoints" / "model.ckpt"
    _, hparams = load_checkpoint(checkpoint)
    assert hparams["stain"] == manifest["stain"]
    plain = compose(train_overrides + ["study=stained"])
    assert prepared_path(plain.data) != prepared_path(cfg.data)  # different data, different folder
    assert not np.array_equal(
        np.load(prepared_path(cfg.data) / "test" / "images.npy")[0],
        np.load(prepare_plain(plain) / "test" / "images.npy")[0],
    )


def prepare_plain(cfg):
    from nucleiseg.data.prepare import prepare_dataset

    return prepare_dataset(cfg.data)


@pytest.mark.slow
def test_compiled_training_writes_the_same_checkpoint_keys(train_overrides):
    """torch.compile (inductor) needs a C++ toolchain and a minute of compilation on CPU: kept out of CI."""
    from nucleiseg.inference.checkpoint import load_checkpoint

    cfg = compose(train_overrides + ["study=compiled", "model.compile=true", "encoder=unet"])
    metrics = run(cfg)
    assert 0 <= metrics["test/jaccard"] <= 1
    model, hparams = load_checkpoint(run_folder(cfg) / "checkpoints" / "model.ckpt")  # keys without _orig_mod
    assert hparams["encoder"] == "unet"


def test_missing_imagenet_weights_fail_before_any_data_work(train_overrides, tmp_path, monkeypatch):
    import nucleiseg.models.weights as weights

    monkeypatch.setattr(weights, "_host_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(weights, "_cached", lambda encoder: None)
    with pytest.raises(weights.WeightsNotFoundError, match="resnet50-19c8e357.pth"):
        run(compose(train_overrides + ["encoder=resnet50", "pretrained=true", "model.unet_widths=null"]))
    assert not (tmp_path / "data").exists() and not (tmp_path / "outputs").exists()


def test_missing_dataset_says_how_to_get_it(tmp_path):
    cfg = compose([f"paths.root_dir={tmp_path}", "encoder=unet_bn", "pretrained=false"])
    with pytest.raises(FileNotFoundError, match="nucleiseg data download tnbc"):
        run(cfg)


def test_the_release_experiment_trains_a_distance_model_on_everything(tmp_path, tracking_uri):
    """experiment=release on synthetic tiles (the real data is not in CI): distance head, no test hold-out,
    post-processing tuned for the distance method, a model card, and predict warns about synthetic training."""
    from nucleiseg.inference.checkpoint import load_checkpoint

    cfg = compose(
        [
            "experiment=release",
            "data=synthetic",
            "data.sources.synthetic.microns_per_pixel=0.5",  # (synthetic tiles have no pixel size of their own)
            *fast_run_overrides(tmp_path, tracking_uri),
            "logger.overlays=0",
        ]
    )
    assert cfg.model.head == "distance" and cfg.data.protocol.split == "none"
    metrics = run(cfg)
    assert not any(key.startswith("test/") for key in metrics)
    checkpoint = run_folder(cfg) / "checkpoints" / "model.ckpt"
    model, hparams = load_checkpoint(checkpoint)
    assert hparams["head"] == "distance" and hparams["postprocess"]["method"] == "distance"
    assert hparams["postprocess_tuned_on"] == "val" and hparams["data"]["counts"]["test"] == 0
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    card = (run_folder(cfg) / "checkpoints" / "MODEL_CARD.md").read_text()
    assert "head `distance`" in card and "held-out test 0" in card


def test_sigterm_in_the_test_phase_records_a_killed_run_that_resumes(train_overrides, tracking_uri, monkeypatch):
    """SIGTERM (a cluster's time limit) while the run is being tested: exit 143, MLflow status KILLED with the
    reason, failed.json; the same command later finishes it in the same MLflow run, the reason cleared."""
    import os
    import signal

    from nucleiseg.inference.held_out_pass import SessionTestPass

    cfg = compose(train_overrides + ["study=sigterm", "trainer.max_epochs=2"])
    original = SessionTestPass.on_test_epoch_end
    monkeypatch.setattr(SessionTestPass, "on_test_epoch_end", lambda *args: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 143
    [killed] = _runs(tracking_uri, "sigterm")
    assert killed.info.status == "KILLED" and "SIGTERM" in killed.data.tags["failure_reason"]
    folder = run_folder(cfg)
    assert (
        json.loads((folder / "failed.json").read_text())["status"] == "KILLED" and not (folder / "done.json").exists()
    )
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back
    seconds_before = json.loads((folder / "run.json").read_text())["train_seconds"]

    monkeypatch.setattr(SessionTestPass, "on_test_epoch_end", original)
    result = main(cfg)
    assert result["status"] == "finished"
    [finished] = _runs(tracking_uri, "sigterm")
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"
    assert "failure_reason" not in finished.data.tags and not (folder / "failed.json").exists()
    assert finished.data.metrics["train_seconds"] >= seconds_before  # the sessions add up


def test_a_second_training_of_the_same_run_is_refused_and_touches_nothing(train_overrides, tracking_uri):
    from nucleiseg.util.locking import exclusive

    cfg = compose(train_overrides + ["study=locked"])
    folder = run_folder(cfg)
    with exclusive(folder / ".lock", "test"), pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 2
    assert sorted(p.name for p in folder.iterdir()) == [".lock"] and _runs(tracking_uri, "locked") == []


def test_a_refused_command_never_damages_a_finished_run(train_overrides, tracking_uri, tmp_path, monkeypatch):
    """Re-running a finished run with another test checkpoint is refused (another configuration) without
    flipping the finished MLflow run; moving the data (NUCLEISEG_DATA) does not change the run's identity."""
    cfg = compose(train_overrides + ["study=refusal"])
    run(cfg)
    [before] = _runs(tracking_uri, "refusal")
    with pytest.raises(SystemExit):
        main(compose(train_overrides + ["study=refusal", "test_checkpoint=best"]))
    [after] = _runs(tracking_uri, "refusal")
    assert after.info.status == "FINISHED" and "failure_reason" not in after.data.tags
    assert not (run_folder(cfg) / "failed.json").exists()
    moved = compose(train_overrides + ["study=refusal", f"paths.data_dir={tmp_path / 'elsewhere'}"])
    assert main(moved)["status"] == "skipped"


def test_a_kill_while_finishing_resumes_the_finish_not_the_training(train_overrides, tracking_uri, monkeypatch):
    """SIGTERM in the last seconds (the training checkpoint gone, done.json not yet written): the same command
    finishes the run without training again, and no metric is logged twice into its MLflow run. Test values are
    logged once, at the last epoch's step."""
    import nucleiseg.training.finish as finish_module
    from nucleiseg.training.run import RunKilled

    cfg = compose(train_overrides + ["study=finishkill", "trainer.max_epochs=2"])
    original = finish_module.model_card

    def killed(*args, **kwargs):
        raise RunKilled("stopped by signal SIGTERM; re-run the same command to resume")

    monkeypatch.setattr(finish_module, "model_card", killed)
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 143
    folder = run_folder(cfg)
    assert not (folder / "checkpoints" / "last.ckpt").exists() and not (folder / "done.json").exists()
    monkeypatch.setattr(finish_module, "model_card", original)
    monkeypatch.setattr(lit_module.SegmentationModule, "training_step", lambda *a: pytest.fail("trained again"))
    result = main(cfg)
    assert result["status"] == "finished" and (folder / "done.json").is_file()
    [record] = _runs(tracking_uri, "finishkill")
    assert record.info.status == "FINISHED" and record.data.tags["nucleiseg.done"] == "true"
    client = _client(tracking_uri)
    assert len(client.get_metric_history(record.info.run_id, "loss/train")) == 2
    for key in ("test/jaccard", "test/aji_watershed", "loss/test", "train_seconds"):
        history = client.get_metric_history(record.info.run_id, key)
        assert [point.step for point in history] == [1], key
    assert (folder / "checkpoints" / "MODEL_CARD.md").is_file() and not (folder / "finishing.json").exists()


@pytest.mark.parametrize(("head", "method"), [("hv", "hover"), ("stardist", "stardist")])
def test_the_field_heads_train_tune_their_own_separation_and_predict(train_overrides, tracking_uri, head, method):
    """HoVer-Net's and StarDist's heads through the whole run: their losses logged and falling, their own
    separation tuned on validation (its parameters searched, not the watershed's) and scored on test, and the
    checkpoint predicting their maps."""
    import numpy as np

    from nucleiseg.config.settings import defaults
    from nucleiseg.inference.session import InferenceSession

    cfg = compose(
        train_overrides + [f"study=heads_{head}", f"model.head={head}", "trainer.max_epochs=2", "model.n_rays=8"]
    )
    metrics = run(cfg)
    assert 0 <= metrics[f"test/aji_{method}"] <= 1 and "test/aji_watershed" in metrics
    done = json.loads((run_folder(cfg) / "done.json").read_text())
    [record] = _runs(tracking_uri, f"heads_{head}")
    parts = ("hv_mse", "hv_msge") if head == "hv" else ("star_prob", "star_dist")
    history = _client(tracking_uri).get_metric_history(record.info.run_id, f"train/{parts[1]}")
    assert len(history) == 2 and all(np.isfinite(m.value) for m in history)
    tuned = {k.removeprefix("tuned."): v for k, v in record.data.tags.items() if k.startswith("tuned.")}
    assert tuned["method"] == method and any(k.startswith("hover_" if head == "hv" else "star_") for k in tuned)
    session = InferenceSession.from_checkpoint(done["test_checkpoint"], defaults("predict"))
    prediction = session.predict(np.full((64, 64, 3), 200, np.uint8))
    assert prediction.maps.shape[0] == (3 if head == "hv" else 2 + 8) and session.postprocess.method == method
