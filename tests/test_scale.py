"""Scale: DDP on CPU (two gloo processes), sweep launchers, ONNX export, the benchmark command."""

import json
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from nucleiseg.cli import main as cli
from tests.conftest import REPO, fast_run_overrides


def _train(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_ddp_on_cpu_with_two_processes(tmp_path, tracking_uri):
    result = _train(
        "experiment=quickstart",
        "trainer=ddp",
        "trainer.devices=2",
        "study=ddp",
        *fast_run_overrides(tmp_path, tracking_uri),
        "logger.overlays=0",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "gloo" in result.stderr.lower() or "distributed" in result.stderr.lower()
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one MLflow run, written by rank 0 only
    assert "test/jaccard" in runs[0].data.metrics
    [done] = list((tmp_path / "outputs" / "ddp").glob("*/done.json"))
    assert json.loads(done.read_text())["run_id"] == runs[0].info.run_id


def test_local_gpu_launcher_runs_a_sweep_in_parallel_workers(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "experiment=paper",
            "hydra/launcher=local_gpus",
            "dry_run=true",
            "seed=0",
            f"paths.root_dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "NUCLEISEG_GPUS": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert "14 planned" in result.stdout


def test_slurm_launcher_config_composes():
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "experiment=paper",
            "hydra/launcher=slurm",
            "--cfg",
            "hydra",
            "--package",
            "hydra.launcher",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SlurmLauncher" in result.stdout and "gpus_per_node: 1" in result.stdout


def test_onnx_export_matches_pytorch(trained_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra (nucleiseg[onnx])")
    out = tmp_path / "model.onnx"
    assert cli(["export-onnx", str(trained_run[3]), "--out", str(out), "--image-size", "64"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.stat().st_size > 1_000_000 and result["max_prob_diff"] < 1e-4
    assert cli(["export-onnx", str(trained_run[3]), "--out", str(out)]) == 2  # never overwrites


def test_benchmark_prints_and_writes_a_table(tmp_path, capsys):
    code = cli(
        [
            "benchmark",
            "--configs",
            "unet_bn,densenet121",
            "--image-size",
            "64",
            "--iterations",
            "1",
            "--train-steps",
            "1",
            "--warmup",
            "1",
            "--out",
            str(tmp_path),
            "--no-mlflow",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "nucleiseg benchmark" in printed and "Projected" in printed
    rows = (tmp_path / "benchmark.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # modified U-Net, DenseNet-121 with and without ImageNet
    import pandas as pd

    table = pd.read_csv(tmp_path / "benchmark.csv")
    assert (table.infer_fast > 0).all() and (table.train_naive > 0).all() and np.isfinite(table.infer_ratio).all()
    assert "| DenseNet-121 (ImageNet) |" in (tmp_path / "benchmark.md").read_text()
    assert (
        cli(
            [
                "benchmark",
                "--configs",
                "unet_bn",
                "--image-size",
                "64",
                "--iterations",
                "1",
                "--train-steps",
                "1",
                "--out",
                str(tmp_path),
                "--no-mlflow",
            ]
        )
        == 2
    )  # existing table kept without --overwrite
    assert cli(["benchmark", "--image-size", "32", "--no-mlflow"]) == 2
    assert cli(["benchmark", "--configs", "vgg16", "--no-mlflow"]) == 2
