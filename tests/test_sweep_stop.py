"""A sweep stopped on purpose (SIGTERM): the killed seed counts in the study's summary runs, and a finished run's
training time is one number (``run.json`` and ``done.json`` agree)."""

import json
import os
import signal

from mlflow.tracking import MlflowClient

from tests.conftest import fast_run_overrides, run_train_here


def test_a_killed_seed_counts_in_the_summary_runs_and_train_seconds_agree(tmp_path, tracking_uri, monkeypatch):
    from nucleiseg.inference.held_out_pass import SessionTestPass

    original, tests = SessionTestPass.on_test_epoch_end, []

    def killed_in_the_second_run(*args):
        tests.append(args)
        if len(tests) == 2:  # seed 1, while it is tested: a cluster's time limit
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)

    monkeypatch.setattr(SessionTestPass, "on_test_epoch_end", killed_in_the_second_run)
    overrides = [*fast_run_overrides(tmp_path, tracking_uri), "logger.overlays=0"]
    result = run_train_here("experiment=quickstart", "study=sweepstop", "seed=0,1", *overrides, multirun=True)
    assert result.returncode == 143, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 finished" in result.stdout and "1 killed" in result.stdout
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("sweepstop").experiment_id
    [summary] = client.search_runs([experiment], "tags.summary = 'true'")
    assert summary.data.metrics["n"] == 1 and summary.data.metrics["n_killed"] == 1
    [finished] = (tmp_path / "outputs" / "sweepstop").glob("*seed0*")
    done = json.loads((finished / "done.json").read_text())
    assert done["metrics"]["train_seconds"] == json.loads((finished / "run.json").read_text())["train_seconds"]
    [seed0] = [r for r in client.search_runs([experiment]) if r.info.run_name.startswith(finished.name)]
    assert seed0.data.metrics["train_seconds"] == done["metrics"]["train_seconds"]
