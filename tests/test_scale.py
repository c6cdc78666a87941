"""Scale: DDP on CPU (two gloo processes), sweep launchers, ONNX export, the benchmark command."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from nucleiseg.cli import main as cli
from tests.conftest import REPO, fast_run_overrides, run_train


def _train(*args, timeout=600):
    return run_train(*args, timeout=timeout)


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


def test_parallel_jobs_share_one_sqlite_store_without_losing_a_run(tmp_path, tracking_uri):
    """hydra/launcher=local_parallel: four jobs, two at a time in separate processes, all writing to one SQLite
    MLflow store (created before the jobs, WAL mode): every run arrives whole, and the summary says how long the
    study took, at how many images/s, and how much disk it uses."""
    store = f"sqlite:///{tmp_path / 'parallel.db'}"  # a fresh store: the parallel jobs create nothing themselves
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "experiment=quickstart",
            "study=parallel",
            "seed=0,1,2,3",
            "hydra/launcher=local_parallel",
            "hydra.launcher.n_jobs=2",
            *fast_run_overrides(tmp_path, store),
            "logger.overlays=0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("parallel").experiment_id
    runs = [r for r in client.search_runs([experiment]) if "summary" not in r.data.tags]
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert all({"test/jaccard", "loss/train", "loss/val"} <= set(r.data.metrics) for r in runs)
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2", "3"]
    assert re.search(
        r"study parallel: 4 runs trained in [0-9.]+ min wall time, [0-9.]+ training images/s", result.stdout
    )
    assert re.search(r"disk: [0-9.]+ GiB", result.stdout)
    [summary] = client.search_runs([experiment], filter_string="tags.summary = 'true'")
    assert summary.data.metrics["n"] == 4


def test_the_parallel_launcher_sizes_itself_to_the_machine(monkeypatch):
    import torch

    from nucleiseg.util import parallel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 16)
    assert parallel.parallel_jobs() == 4  # 16 cores / 4 threads per job
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (75 * 2**30, 80 * 2**30))
    assert parallel.parallel_jobs() == 2 * 7  # 75 GiB free / 10 GiB per job, on each of 2 GPUs
    monkeypatch.setenv("NUCLEISEG_JOBS_PER_GPU", "3")
    assert parallel.parallel_jobs() == 6


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
    out = tmp_path / "model.onnx"
    assert cli(["export-onnx", str(trained_run[3]), "--out", str(out), "--image-size", "64"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.stat().st_size > 1_000_000 and result["max_prob_diff"] < 1e-4
    assert cli(["export-onnx", str(trained_run[3]), "--out", str(out)]) == 2  # never overwrites


SMALL_BENCHMARK = [
    "--image-size",
    "64",
    "--iterations",
    "1",
    "--train-steps",
    "2",
    "--warmup",
    "1",
    "--loop-epochs",
    "2",
    "--no-mlflow",
    # the loop on a small synthetic set and a narrow U-Net: the same code paths in seconds
    "data.sources.synthetic.monuseg_images=4",
    "data.sources.synthetic.tnbc_images_per_slide=[3,3]",
    "data.protocol.n_test=2",
    "data.protocol.val_fraction=0.2",
    "model.unet_widths=[8,16,32,64,128]",
]


def test_benchmark_prints_and_writes_a_table_with_the_real_loop(tmp_path, capsys):
    assert cli(["benchmark", "--configs", "unet_bn", "--out", str(tmp_path), *SMALL_BENCHMARK]) == 0
    printed = capsys.readouterr().out
    assert "nucleiseg benchmark" in printed and "projected 140-run study" in printed
    import pandas as pd

    table = pd.read_csv(tmp_path / "benchmark.csv")
    assert list(table.configuration) == ["Modified U-Net (BatchNorm)"]
    for column in ("infer_naive", "infer_fast", "train_naive", "train_step", "loop"):
        assert (table[column] > 0).all(), column
    assert np.isclose(table.loop_ratio, table.loop / table.train_step).all()
    # 4 MoNuSeg + 6 TNBC - 2 test - 2 validation (20% per dataset) = 6 training sources x 3 augmentations
    assert (table.loop_epoch_images == 18).all()
    assert "| Modified U-Net (BatchNorm) |" in (tmp_path / "benchmark.md").read_text()
    # an existing table is kept without --overwrite; bad sizes and names are refused
    assert cli(["benchmark", "--configs", "unet_bn", "--out", str(tmp_path), *SMALL_BENCHMARK]) == 2
    assert cli(["benchmark", "--image-size", "32", "--no-mlflow"]) == 2
    assert cli(["benchmark", "--configs", "vgg16", "--no-mlflow"]) == 2


@pytest.mark.slow
def test_benchmark_of_an_smp_encoder(tmp_path):
    args = [a for a in SMALL_BENCHMARK if not a.startswith("model.")]
    assert cli(["benchmark", "--configs", "densenet121", "--out", str(tmp_path), *args]) == 0
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "benchmark.csv")) == 2  # with and without ImageNet: one architecture
