"""Evaluate and report on a real (tiny) trained run."""

import pickle

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from nucleiseg.cli import main as cli
from nucleiseg.evaluate import evaluate
from nucleiseg.inference.checkpoint import CheckpointError, load_checkpoint
from nucleiseg.tracking.report import write_report


@pytest.fixture
def trained(trained_run):
    return trained_run


def test_evaluate_reproduces_the_training_test_metrics(trained):
    cfg, _, metrics, checkpoint = trained
    results = evaluate(checkpoint, cfg, split="test", log_to_mlflow=False)
    for name in ("jaccard", "f1", "recall", "precision", "accuracy"):
        assert results[f"test/{name}"] == pytest.approx(metrics[f"test/{name}"], abs=1e-5)
    assert results["n_images"] == 6 and results["test/images_per_second"] > 0
    for method in ("watershed", "components"):
        assert 0 <= results[f"test/aji_{method}"] <= 1 and 0 <= results[f"test/pq_{method}"] <= 1
        assert results[f"test/aji_{method}"] == pytest.approx(metrics[f"test/aji_{method}"], abs=1e-6)


def test_evaluate_a_folder_of_pairs_and_log_to_mlflow(trained, tmp_path, tracking_uri):
    cfg, _, _, checkpoint = trained
    from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for k in range(2):
        image, mask = synthetic_tile(SyntheticSpec(40, 56, 6), 500 + k)  # not multiples of 32: padded
        Image.fromarray(image).save(tmp_path / "images" / f"tile{k}.png")
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(tmp_path / "masks" / f"tile{k}.png")
    results = evaluate(checkpoint, cfg, images=tmp_path / "images", masks=tmp_path / "masks", study="eval_folder")
    assert results["n_images"] == 2 and 0 <= results["folder/jaccard"] <= 1
    client = MlflowClient(tracking_uri)
    [logged] = client.search_runs([client.get_experiment_by_name("eval_folder").experiment_id])
    assert logged.data.metrics["folder/jaccard"] == pytest.approx(results["folder/jaccard"])
    assert logged.data.tags["checkpoint"] == str(checkpoint.resolve()) and logged.data.tags["encoder"] == "unet_bn"


def test_evaluate_cli_prints_a_table(trained, capsys):
    _, overrides, _, checkpoint = trained
    assert cli(["evaluate", str(checkpoint), *overrides, "--no-mlflow"]) == 0
    assert "test/jaccard" in capsys.readouterr().out
    assert cli(["evaluate", str(checkpoint.parent / "missing.ckpt"), *overrides, "--no-mlflow"]) == 2


def test_checkpoints_load_without_running_pickled_code(trained, tmp_path):
    _, _, _, checkpoint = trained
    model, hparams = load_checkpoint(checkpoint)
    assert hparams["encoder"] == "unet_bn" and not model.training

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {}, "hyper_parameters": {"encoder": "unet"}, "x": Payload()}))
    with pytest.raises(CheckpointError, match="cannot load safely"):
        load_checkpoint(evil)


def test_checkpoint_of_another_architecture_is_named(trained, tmp_path):
    _, _, _, checkpoint = trained
    state = torch.load(checkpoint, weights_only=True)
    state["hyper_parameters"]["encoder"] = "unet"  # BatchNorm weights do not fit the plain U-Net
    wrong = tmp_path / "wrong.ckpt"
    torch.save(state, wrong)
    with pytest.raises(CheckpointError, match="do not fit encoder=unet"):
        load_checkpoint(wrong)


def test_report_with_prediction_figure(trained, tmp_path, tracking_uri, capsys):
    out = write_report(
        tracking_uri,
        "evaluated",
        tmp_path / "report",
        figure_configurations=["Modified U-Net (BatchNorm)"],
        figure_image=1,
    )
    assert (out / "fig9_predictions.png").stat().st_size > 1000 and (out / "fig9_predictions.svg").is_file()
    instances = (out / "table4_instances.csv").read_text()
    assert "aji_watershed" in instances and "Modified U-Net (BatchNorm)" in instances
    assert "fig9_predictions.png" in (out / "report.md").read_text()
    assert (
        cli(
            [
                "report",
                "--study",
                "evaluated",
                "--out",
                str(tmp_path / "again"),
                "--tracking-uri",
                tracking_uri,
                "--figure-configs",
                "ResNet-50",
            ]
        )
        == 2
    )
    assert "no finished run of 'ResNet-50'" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
