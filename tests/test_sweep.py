"""Hydra multirun sweeps, run as the user runs them: ``python train.py -m ...``, through train.py's own Hydra app
(in this process where nothing needs a process of its own; in a subprocess for signals and SLURM)."""

import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, fast_run_overrides, run_train, run_train_here


def _train(*overrides: str) -> subprocess.CompletedProcess:
    return run_train_here(*overrides, multirun=True)


def _per_seed(client, study):
    """The study's training runs (not the summary runs written at the end of a sweep)."""
    experiment = client.get_experiment_by_name(study).experiment_id
    return [r for r in client.search_runs([experiment]) if r.data.tags.get("summary") != "true"]


def _small(tmp_path, tracking_uri):
    return [*fast_run_overrides(tmp_path, tracking_uri), "logger.overlays=0"]


def test_two_configs_by_two_seeds_give_four_finished_mlflow_runs(tmp_path, tracking_uri):
    """Planned first (dry_run=true: each configuration measured once, its seeds share it; the sweep's time and
    disk projected), then trained: four finished runs, and the projection against the actual time."""
    words = [
        "experiment=quickstart",
        "study=sweep4",
        "encoder=unet_bn,unet",
        "seed=0,1",
        *_small(tmp_path, tracking_uri),
    ]
    planned = _train(*words, "dry_run=true")
    assert planned.returncode == 0, planned.stderr[-3000:]
    lines = re.findall(r"would train (\S+) .*: about ([\d.]+) min at ([\d.]+) training images/s here", planned.stdout)
    assert len(lines) == 4 and all(float(minutes) > 0 for _, minutes, _ in lines)
    measured = list((tmp_path / "outputs" / "sweep4" / ".projection" / "configurations").glob("*.json"))
    assert len(measured) == 2  # one measurement per configuration, not per seed
    assert "in all: 4 runs" in planned.stdout and "basic (one run at a time)" in planned.stdout
    assert re.search(r"unet_bn-scratch\s+2\s", planned.stdout)
    result = _train(*words)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"projected [\d.]+ min wall time for the 4 planned runs \(dry_run=true\), actual", result.stdout)
    client = MlflowClient(tracking_uri)
    runs = _per_seed(client, "sweep4")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert {(r.data.tags["encoder"], r.data.tags["seed"]) for r in runs} == {
        ("unet_bn", "0"),
        ("unet_bn", "1"),
        ("unet", "0"),
        ("unet", "1"),
    }
    assert all("test/jaccard" in r.data.metrics and "loss/val" in r.data.metrics for r in runs)
    assert all(r.data.params["encoder"] == r.data.tags["encoder"] for r in runs)
    assert "sweep summary" in result.stdout and "4 finished, 0 failed" in result.stdout
    summary = result.stdout.split("sweep summary")[1]
    assert len(re.findall(r"unet_bn-scratch-seed[01]-cfg[0-9a-f]{8} +. finished", summary)) == 2

    again = _train(
        "experiment=quickstart", "study=sweep4", "encoder=unet_bn,unet", "seed=0,1", *_small(tmp_path, tracking_uri)
    )
    assert again.returncode == 0 and "0 finished, 4 skipped, 0 failed" in again.stdout
    assert len(_per_seed(client, "sweep4")) == 4
    summaries = client.search_runs([client.get_experiment_by_name("sweep4").experiment_id], "tags.summary = 'true'")
    assert sorted(r.data.tags["configuration"] for r in summaries) == ["Modified U-Net (BatchNorm)", "U-Net"]


def test_a_failing_job_does_not_stop_the_sweep(tmp_path, tracking_uri):
    # unet_bn with ImageNet weights is invalid: that job fails, the other one still trains
    result = _train(
        "experiment=quickstart", "study=sweepfail", "pretrained=true,false", *_small(tmp_path, tracking_uri)
    )
    assert result.returncode == 1
    assert "1 job(s) failed: unet_bn-imagenet-seed0" in result.stdout
    client = MlflowClient(tracking_uri)
    runs = _per_seed(client, "sweepfail")
    assert [(r.data.tags["pretrained"], r.info.status) for r in runs] == [("false", "FINISHED")]


def test_the_paper_study_is_140_valid_runs(tmp_path):
    """The study sweeps every Table I configuration (each composed and validated here, for one seed) over
    range(10) seeds. Composing all 140 jobs costs a minute of Hydra on 2 cores for no more coverage."""
    import yaml

    params = yaml.safe_load((REPO / "conf" / "experiment" / "paper.yaml").read_text())["hydra"]["sweeper"]["params"]
    assert params == {"paper_config": "glob(*)", "seed": "range(10)"}
    result = _train(
        "experiment=paper",
        "seed=0",
        "dry_run=true",
        "dry_run_steps=0",
        f"paths.root_dir={tmp_path}",
        "hydra/job_logging=disabled",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    planned = re.findall(r"dry run: would train (\S+) \[(.+?)\]", result.stdout)
    configurations = {label for _, label in planned}
    assert len(planned) == 14 and len(configurations) == 14 and len({name for name, _ in planned}) == 14
    assert "DenseNet-121 (ImageNet)" in configurations and "U-Net (ImageNet)" not in configurations


def test_the_users_own_command_plans_four_runs(tmp_path):
    result = _train(
        "encoder=resnet50,densenet121",
        "pretrained=true,false",
        "dry_run=true",
        "dry_run_steps=0",
        f"paths.root_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(re.findall(r"would train (\S+)", result.stdout)) == [
        "densenet121-imagenet-seed0",
        "densenet121-scratch-seed0",
        "resnet50-imagenet-seed0",
        "resnet50-scratch-seed0",
    ]


def test_a_typo_in_an_override_fails_before_any_work(tmp_path):
    result = _train("encoder=unet", "trainer.max_epoch=3", f"paths.root_dir={tmp_path}")
    assert result.returncode != 0 and "max_epoch" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_sigterm_stops_a_sweep_on_purpose_and_the_same_command_goes_on(tmp_path, tracking_uri):
    """SIGTERM during the first job of a two-job sweep: that run is KILLED, no further job starts, the sweep
    prints its summary and exits 143; re-running the command resumes and finishes both."""
    import signal
    import time

    command = [
        sys.executable,
        "train.py",
        "-m",
        "experiment=quickstart",
        "study=sweepkill",
        "seed=0,1",
        *_small(tmp_path, tracking_uri),
        "trainer.max_epochs=3",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((tmp_path / "outputs" / "sweepkill").glob("*seed0*/run.json")):
        time.sleep(0.2)
    assert list((tmp_path / "outputs" / "sweepkill").glob("*seed0*/run.json")), "the first job never started"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stdout[-2000:] + stderr[-2000:]
    assert "sweep stopped" in stdout and "1 killed" in stdout
    assert not list((tmp_path / "outputs" / "sweepkill").glob("*seed1*"))  # no further job started
    client = MlflowClient(tracking_uri)
    [killed] = client.search_runs([client.get_experiment_by_name("sweepkill").experiment_id])
    assert killed.info.status == "KILLED"
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = [r for r in client.search_runs([client.get_experiment_by_name("sweepkill").experiment_id])]
    per_seed = [r for r in runs if "summary" not in r.data.tags]
    assert len(per_seed) == 2 and {r.info.status for r in per_seed} == {"FINISHED"}


def test_the_slurm_code_path_with_submitit_on_this_machine(tmp_path, tracking_uri):
    """hydra/launcher=slurm_local: each job its own process through the submitit plugin, as on a cluster; one
    job fails (a plain U-Net with ImageNet weights), the other finishes, and the sweep says so and exits 1."""
    result = run_train(
        "experiment=quickstart",
        "study=submitit",
        "pretrained=true,false",
        "hydra/launcher=slurm_local",
        *_small(tmp_path, tracking_uri),
        multirun=True,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 job(s) failed: unet_bn-imagenet-seed0" in result.stdout
    assert list(tmp_path.glob("outputs/submitit/.hydra/multirun-*/.submitit/*"))  # submitit's own job folders
    client = MlflowClient(tracking_uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("submitit").experiment_id])]
    finished = [r for r in runs if "summary" not in r.data.tags]
    assert [(r.data.tags["pretrained"], r.info.status) for r in finished] == [("false", "FINISHED")]


@pytest.mark.parametrize(("experiment", "runs", "epochs"), [("heads", 12, 12), ("heads_gpu", 20, 40)])
def test_the_heads_study_plans_every_head_over_its_seeds(tmp_path, experiment, runs, epochs):
    """experiment=heads (this CPU's budget) and heads_gpu (the release recipe) sweep the four heads over seeds on
    the paper's TNBC hold-out; the dry run lists each run (its GPU variant plans here without a GPU)."""
    from nucleiseg.config.compose import compose

    cfg = compose([f"experiment={experiment}"])
    assert cfg.data.protocol.split == "paper" and cfg.trainer.max_epochs == epochs and cfg.encoder == "unet_bn"
    assert (cfg.model.unet_widths is None) == (experiment == "heads_gpu")
    result = _train(f"experiment={experiment}", "dry_run=true", "dry_run_steps=0", f"paths.root_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    planned = re.findall(r"dry run: would train (\S+) \[(.+?)\]", result.stdout)
    assert len(planned) == runs and len({name for name, _ in planned}) == runs
    labels = {label for _, label in planned}
    assert {"Modified U-Net (BatchNorm)", "Modified U-Net (BatchNorm) + HV head (HoVer-Net)"} <= labels
    assert "Modified U-Net (BatchNorm) + StarDist head" in labels
