"""``nucleiseg benchmark --suite gpu`` end to end at tiny sizes (slow: a packed sweep trains two runs)."""

import pandas as pd
import pytest
import torch

from nucleiseg.cli import main as cli


@pytest.mark.slow
def test_the_gpu_suite_measures_every_part_and_projects_the_study(trained_run, tmp_path):
    device = "gpu" if torch.cuda.is_available() else "cpu"
    arguments = ["benchmark", "--suite", "gpu", "--device", device, "--image-size", "64", "--configs", "unet_bn"]
    arguments += ["--sweep-epochs", "1", "--slide-size", "2000", "--iterations", "2", "--train-steps", "2"]
    arguments += ["--warmup", "1", "--no-mlflow", "--model", str(trained_run[3]), "--out", str(tmp_path)]
    assert cli(arguments) == 0
    rows = pd.read_csv(tmp_path / "suite.csv")
    assert list(dict.fromkeys(rows["part"])) == ["inference", "training", "sweep", "slide"]
    assert (rows["value"] > 0).all()
    projected = rows[rows["measure"].str.startswith("projected")].iloc[0]
    assert "20 runs x 20 epochs" in projected["measure"]  # one architecture: 2 variants x 10 seeds
    assert "nucleiseg benchmark --suite gpu on" in (tmp_path / "suite.md").read_text()


def test_the_benchmark_logs_to_the_users_store_after_its_loop_logged_to_a_scratch_one(tmp_path, monkeypatch):
    """The training loop is measured against a scratch MLflow store (deleted after): MLFLOW_TRACKING_URI and MLflow's
    own URI are the user's again after it, and the results go to the user's store."""
    import os

    import mlflow
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mine.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    arguments = ["benchmark", "--device", "cpu", "--image-size", "64", "--configs", "unet_bn", "--iterations", "1"]
    arguments += ["--train-steps", "1", "--warmup", "0", "--loop-epochs", "2", "--out", str(tmp_path / "bench")]
    arguments += ["data.sources.synthetic.monuseg_images=2", "data.sources.synthetic.tnbc_images_per_slide=[2,2]"]
    arguments += ["data.protocol.n_test=1", "model.unet_widths=[8,16,32,64,128]", "data.loader.batch_size=1"]
    arguments += [f"paths.root_dir={tmp_path}"]  # the artifacts of the benchmark's run too
    saved = mlflow.get_tracking_uri()
    try:
        assert cli(arguments) == 0
        assert os.environ["MLFLOW_TRACKING_URI"] == store and mlflow.get_tracking_uri() == store
    finally:
        mlflow.set_tracking_uri(saved)
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("benchmark").experiment_id])
    assert run.data.metrics["Modified_U-Net_BatchNorm/loop"] > 0
    assert client.get_experiment_by_name("benchmark-loop") is None  # the loop's runs stayed in its scratch store


def test_the_suites_packed_sweep_logs_to_its_own_scratch_store_only(tmp_path, monkeypatch):
    """The packed sweep is told its scratch store by logger.tracking_uri; a MLFLOW_TRACKING_URI of the user's (a team
    server) would win over it in the sweep's processes, and the benchmark's runs would land on the server."""
    import subprocess

    import nucleiseg.benchmarks.suite as suite
    from nucleiseg.benchmarks.configurations import Options
    from nucleiseg.config.compose import compose

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team-server:5000")
    started = []

    def sweep(command, **kwargs):
        started.append((command, kwargs.get("env")))
        return subprocess.CompletedProcess(command, 1, "", "stopped here")

    monkeypatch.setattr(suite.subprocess, "run", sweep)
    measure = Options(["unet_bn"], 64, torch.device("cpu"), 1, 1, 1, 0, 0, False)
    options = suite.SuiteOptions(measure, ["unet_bn"], 1, 0, 0.05, None)
    with pytest.raises(RuntimeError, match="the packed sweep failed"):
        suite._sweep_rows(compose([]), options, tmp_path, log=lambda line: None)
    [(command, env)] = started
    assert f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}" in command
    assert env is not None and "MLFLOW_TRACKING_URI" not in env and env.get("PATH") == __import__("os").environ["PATH"]
