"""Evaluate (through the inference session) and report on a real (tiny) trained run."""

import json
import pickle

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from nucleiseg.cli import main as cli
from nucleiseg.config.settings import defaults
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
from nucleiseg.evaluation.evaluate import evaluate
from nucleiseg.inference.checkpoint import CheckpointError, load_checkpoint
from nucleiseg.inference.session import InferenceSession
from nucleiseg.tracking.report import write_report
from nucleiseg.util.errors import DatasetLayoutError
from tests.conftest import mask_polygons, region_xml


@pytest.fixture
def trained(trained_run):
    return trained_run


def _session(checkpoint, **settings) -> InferenceSession:
    return InferenceSession.from_checkpoint(checkpoint, defaults("predict", **settings))


def test_evaluate_reproduces_the_training_test_metrics(trained):
    """The checkpoint knows its data: no data config is needed, and the numbers are training's test pass."""
    _, _, metrics, checkpoint = trained
    # training's test pass runs the in-memory model through PyTorch at predict.precision=auto (bf16 on CPUs with
    # native bf16, fp32 elsewhere): the same path here (a model file would otherwise run through ONNX Runtime)
    results = evaluate(_session(checkpoint, precision="auto", backend="torch"), split="test")
    for name in ("jaccard", "f1", "recall", "precision", "accuracy"):
        assert results[f"test/{name}"] == pytest.approx(metrics[f"test/{name}"], abs=1e-5)
    assert results["n_images"] == 6 and "test/images_per_second" not in results  # speed only when asked
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
    code = cli(
        [
            "evaluate",
            str(checkpoint),
            "--images",
            str(tmp_path / "images"),
            "--masks",
            str(tmp_path / "masks"),
            "--study",
            "eval_folder",
            f"logger.tracking_uri={tracking_uri}",
            "--json",
        ]
    )
    assert code == 0
    results = evaluate(_session(checkpoint), images=tmp_path / "images", masks=tmp_path / "masks")
    assert results["n_images"] == 2 and 0 <= results["folder/jaccard"] <= 1
    client = MlflowClient(tracking_uri)
    [logged] = client.search_runs([client.get_experiment_by_name("eval_folder").experiment_id])
    assert logged.data.metrics["folder/jaccard"] == pytest.approx(results["folder/jaccard"])
    assert logged.data.tags["checkpoint"] == str(checkpoint.resolve()) and logged.data.tags["encoder"] == "unet_bn"


def test_evaluate_cli_prints_a_table(trained, capsys):
    _, _, _, checkpoint = trained
    assert cli(["evaluate", str(checkpoint), "--no-mlflow", "--speed", "speed.iterations=1", "speed.warmup=0"]) == 0
    printed = capsys.readouterr().out
    assert "test/jaccard" in printed and "test/images_per_second" in printed
    assert cli(["evaluate", str(checkpoint.parent / "missing.ckpt"), "--no-mlflow"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_a_threshold_on_the_command_line_changes_evaluate_and_predict_and_is_logged(trained, tmp_path, capsys):
    _, _, _, checkpoint = trained
    outputs = {}
    for threshold in ("0.2", "0.8"):
        assert cli(["evaluate", str(checkpoint), "--json", "--no-mlflow", f"threshold={threshold}"]) == 0
        captured = capsys.readouterr()
        outputs[threshold] = json.loads(captured.out)
        assert f"threshold={threshold} (given) replaces the checkpoint's threshold=0.5" in captured.err
        assert outputs[threshold]["postprocess"]["threshold"] == float(threshold)
        assert outputs[threshold]["postprocess"]["origins"]["threshold"] == "user"
    low, high = outputs["0.2"]["pixel"], outputs["0.8"]["pixel"]
    assert low["recall"] > high["recall"] and low["accuracy"] != high["accuracy"]
    # the same rule in predict, the override anywhere on the line (here after the options)
    image, _ = synthetic_tile(SyntheticSpec(64, 64, n_nuclei=8), 12)
    Image.fromarray(image).save(tmp_path / "tile.png")
    masks = {}
    for threshold in ("0.2", "0.8"):
        out = tmp_path / f"out{threshold}"
        code = cli(
            [
                "predict",
                str(tmp_path / "tile.png"),
                "--out",
                str(out),
                "--checkpoint",
                str(checkpoint),
                "--quiet",
                f"threshold={threshold}",
            ]
        )
        assert code == 0
        assert "replaces the checkpoint's threshold" in capsys.readouterr().err
        masks[threshold] = np.asarray(Image.open(out / "tile" / "mask.png")) > 0
        assert json.loads((out / "tile" / "done.json").read_text())["settings"]["threshold"] == float(threshold)
    assert masks["0.2"].sum() > masks["0.8"].sum() and (masks["0.8"] <= masks["0.2"]).all()


def _monuseg_release(folder, n=2):
    """The official test release's layout: TCGA-*.tif beside TCGA-*.xml (instances from the XML)."""
    folder.mkdir(parents=True)
    for index in range(n):
        image, mask = synthetic_tile(SyntheticSpec(96, 96, n_nuclei=8, touching_fraction=0.0), 900 + index)
        name = f"TCGA-{50 + index}-0000-01Z-00-DX1"
        Image.fromarray(image).save(folder / f"{name}.tif")
        (folder / f"{name}.xml").write_text(region_xml(mask_polygons(mask)))
    return folder


def test_evaluate_on_the_monuseg_test_release_prints_one_json_object(trained, tmp_path, capsys):
    _, _, _, checkpoint = trained
    release = _monuseg_release(tmp_path / "MoNuSegTestData")
    assert cli(["evaluate", str(checkpoint), "--monuseg", str(release), "--json", "--no-mlflow"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == 2 and result["n_true_nuclei"] > 8
    assert {"jaccard", "f1", "recall", "precision"} <= set(result["pixel"])
    for method in ("components", "watershed"):
        assert {"aji", "aji_plus", "pq", "dq", "sq", "object_f1", "n_predicted_nuclei"} <= set(
            result["instances"][method]
        )
    assert result["postprocess"]["tuned_on"] == "val" and "min_distance" in result["postprocess"]
    # images lacking XML and XML lacking images are named, all at once
    (release / "TCGA-99-0000-01Z-00-DX1.tif").write_bytes((release / "TCGA-50-0000-01Z-00-DX1.tif").read_bytes())
    (release / "TCGA-77-0000-01Z-00-DX1.xml").write_text("<Annotations/>")
    with pytest.raises(DatasetLayoutError, match=r"images without XML.*TCGA-99.*XML without image.*TCGA-77"):
        evaluate(_session(checkpoint), monuseg=release)


def test_the_monuseg_scale_comes_from_the_checkpoint(trained):
    _, _, _, checkpoint = trained
    session = _session(checkpoint)
    data = session.hparams["data"]
    assert data["dataset_scale"]["monuseg"] == pytest.approx(64 / 64) and data["image_size"] == 64
    assert session.scale_for(dataset="monuseg") == pytest.approx(data["dataset_scale"]["monuseg"])
    assert _session(checkpoint, scale=0.5).scale_for(dataset="monuseg") == 0.5  # --scale wins


def test_checkpoints_load_without_running_pickled_code(trained, tmp_path):
    _, _, _, checkpoint = trained
    model, hparams = load_checkpoint(checkpoint)
    assert hparams["encoder"] == "unet_bn" and not model.training

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {}, "hyper_parameters": {"encoder": "unet"}, "x": Payload()}))
    with pytest.raises(CheckpointError, match="the file holds code .* so it was not loaded"):
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
        settings=defaults("predict"),
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


def test_evaluate_takes_the_pixel_size_of_a_folder_it_asks_for(trained, tmp_path, capsys, caplog):
    _, _, _, checkpoint = trained
    from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    image, mask = synthetic_tile(SyntheticSpec(64, 64, 6), 600)
    Image.fromarray(image).save(tmp_path / "images" / "t.png")
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(tmp_path / "masks" / "t.png")
    words = ["evaluate", str(checkpoint), "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks")]
    with caplog.at_level("WARNING"):
        assert cli([*words, "--mpp", "0.5", "--no-mlflow", "--json"]) == 0
    assert "pixel size unknown" not in caplog.text
    assert cli([*words, "--mpp", "1000", "--no-mlflow"]) == 2
    assert "pixel size between" in capsys.readouterr().err
