"""Cohorts of slides through submitit's local executor (the SLURM code path on this machine)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nucleiseg.cli import main as cli
from nucleiseg.data.synthetic_slide import discs_content, write_slide
from nucleiseg.predict.cohort import LOCK, read_cohort

CENTRES = [(100.0, 120.0), (300.0, 260.0), (420.0, 90.0)]


@pytest.fixture
def cohort(tmp_path):
    """Four slides (one of them truncated) and a CSV list of them with a missing and a duplicated line."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for k in range(3):
        write_slide(folder / f"s{k}.tif", 640, 480, discs_content(CENTRES[: k + 1], 9), mpp=0.5, tile=128, min_side=256)
    data = (folder / "s0.tif").read_bytes()
    (folder / "broken.tif").write_bytes(data[: len(data) // 3])
    listing = tmp_path / "cohort.csv"
    rows = [
        "path",
        "slides/s0.tif",
        "slides/s1.tif",
        "slides/s2.tif",
        "slides/broken.tif",
        "slides/gone.tif",
        "slides/s1.tif",
    ]
    listing.write_text("\n".join(rows) + "\n")
    return listing


def _slide(path, discs=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_slide(path, 640, 480, discs_content(CENTRES[:discs], 9), mpp=0.5, tile=128, min_side=256)


def test_reading_a_cohort_names_missing_slides_and_counts_a_line_listed_twice_once(cohort):
    listing = read_cohort([str(cohort)])
    assert [e.path.name for e in listing.entries] == ["s0.tif", "s1.tif", "s2.tif", "broken.tif"]
    assert all(e.path.is_absolute() and e.key == str(e.path.resolve()) for e in listing.entries)
    # the missing slide is a failure, keyed by its resolved path; the duplicate is a warning, not a failure
    assert [(p.slide, p.key, p.reason) for p in listing.problems] == [
        ("gone.tif", str((cohort.parent / "slides" / "gone.tif").resolve()), "no such file (line 6 of cohort.csv)")
    ]
    [warning] = listing.warnings
    assert "s1.tif" in warning and "line 3 of cohort.csv" in warning and "line 7 of cohort.csv" in warning


def test_a_missing_region_file_is_its_slides_failure(tmp_path):
    _slide(tmp_path / "slides" / "s0.tif")
    _slide(tmp_path / "slides" / "s1.tif")
    (tmp_path / "cohort.csv").write_text("path,roi\nslides/s0.tif,regions/nowhere.geojson\nslides/s1.tif,\n")
    listing = read_cohort([str(tmp_path / "cohort.csv")])
    assert [e.path.name for e in listing.entries] == ["s1.tif"]
    [problem] = listing.problems
    assert problem.slide == "s0.tif" and "nowhere.geojson" in problem.reason and "line 2" in problem.reason


def _words(listing, out, model, *more):
    words = ["predict", str(listing), "--out", str(out), "--model", str(model), "--no-mlflow"]
    return [*words, "slide.min_tissue=0", *more]


def test_a_slide_listed_before_it_exists_is_current_once_predicted(trained_run, tmp_path, monkeypatch):
    """The README's usage: a CSV given by a relative path, its slides relative to it. A slide missing at the
    first run and predicted at the second has one row, finished, and the command then exits 0."""
    monkeypatch.chdir(tmp_path)
    _slide(tmp_path / "study" / "slides" / "s0.tif")
    (tmp_path / "study" / "cohort.csv").write_text("path\nslides/s0.tif\nslides/late.tif\n")
    words = _words("study/cohort.csv", "out", trained_run[3])
    assert cli(words) == 1
    first = pd.read_csv("out/cohort.csv").set_index("slide")
    assert first.loc["late.tif", "status"] == "failed" and first.loc["s0.tif", "status"] == "finished"
    _slide(tmp_path / "study" / "slides" / "late.tif", 2)
    assert cli(words) == 0
    table = pd.read_csv("out/cohort.csv")
    assert sorted(zip(table.slide, table.status, strict=True)) == [("late.tif", "finished"), ("s0.tif", "skipped")]
    assert set(table.path) == {str((tmp_path / "study" / "slides" / n).resolve()) for n in ("s0.tif", "late.tif")}


def test_slides_of_one_name_in_two_folders_get_a_folder_each(trained_run, tmp_path):
    first, second, other = tmp_path / "a" / "s.tif", tmp_path / "b" / "s.tif", tmp_path / "a" / "t.tif"
    _slide(first, 1), _slide(second, 3), _slide(other, 2)
    listing = tmp_path / "cohort.csv"
    listing.write_text(f"path\n{first}\n{second}\n{other}\n")
    out = tmp_path / "out"
    assert cli(_words(listing, out, trained_run[3])) == 0
    table = pd.read_csv(out / "cohort.csv").set_index("path")
    assert list(table.status) == ["finished"] * 3
    folders = {p: f"s-{hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:8]}" for p in (first, second)}
    folders[other] = "t"  # a name no other slide has keeps its folder
    for slide, folder in folders.items():
        assert table.loc[str(slide.resolve()), "folder"] == folder
        done = json.loads((out / folder / "done.json").read_text())
        assert done["input"]["path"] == str(slide.resolve())  # each folder holds its own slide's outputs
    assert not (out / "s").exists()


def test_a_missing_region_file_fails_its_slide_and_the_others_go_on(trained_run, tmp_path):
    _slide(tmp_path / "slides" / "s0.tif")
    _slide(tmp_path / "slides" / "s1.tif", 2)
    (tmp_path / "cohort.csv").write_text("path,roi\nslides/s0.tif,nowhere.geojson\nslides/s1.tif,\n")
    out = tmp_path / "out"
    assert cli(_words(tmp_path / "cohort.csv", out, trained_run[3])) == 1
    table = pd.read_csv(out / "cohort.csv").set_index("slide")
    assert table.loc["s1.tif", "status"] == "finished"
    assert table.loc["s0.tif", "status"] == "failed" and "nowhere.geojson" in table.loc["s0.tif", "reason"]


SLOW_JOB = """import os, sys, time
if os.environ.get("NUCLEISEG_TEST_SLOW_JOB") and "submitit.core._submit" in sys.orig_argv:
    time.sleep(600)  # a job busy with a slide that takes its time
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def _descendants(pid):
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _command_line(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux's /proc")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_a_parallel_cohort_stops_its_jobs_too(trained_run, tmp_path, signum, code):
    _slide(tmp_path / "slides" / "s0.tif")
    (tmp_path / "cohort.csv").write_text("path\nslides/s0.tif\n")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_JOB)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "NUCLEISEG_TEST_SLOW_JOB": "1"}
    words = _words(tmp_path / "cohort.csv", tmp_path / "out", trained_run[3], "--launcher", "local_parallel")
    parent = subprocess.Popen(
        [sys.executable, "-m", "nucleiseg.cli", *words, "--shards", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and parent.poll() is None:
            jobs = _descendants(parent.pid)
            if any("submitit.core._submit" in _command_line(pid) for pid in jobs):
                break
            time.sleep(0.2)
        assert parent.poll() is None and jobs, "the cohort's job never started"
        parent.send_signal(signum)
        _, stderr = parent.communicate(timeout=60)
    finally:
        parent.kill()
    assert parent.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and "re-run the same command" in stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in jobs):
        time.sleep(0.2)
    assert [pid for pid in jobs if _alive(pid)] == []
    table = pd.read_csv(tmp_path / "out" / "cohort.csv")
    assert list(zip(table.slide, table.status, strict=True)) == [("s0.tif", "pending")]


def test_a_cohort_in_two_slurm_local_jobs_finishes_every_good_slide_once(
    cohort, trained_run, tmp_path, tracking_uri, capsys
):
    out = tmp_path / "out"
    words = [
        "predict",
        str(cohort),
        "--out",
        str(out),
        "--model",
        str(trained_run[3]),
        "--launcher",
        "slurm_local",
        "--shards",
        "2",
        f"logger.tracking_uri={tracking_uri}",
        "slide.min_tissue=0",
    ]
    assert cli(words) == 1  # a slide failed
    store = tracking_uri.removeprefix("sqlite:///")
    said = f"results logged to MLflow experiment 'cohorts' at {tracking_uri} (the file {store})"
    assert said in capsys.readouterr().err
    table = pd.read_csv(out / "cohort.csv").set_index("slide")
    assert sorted(table.index[table.status == "finished"]) == ["s0.tif", "s1.tif", "s2.tif"]
    assert table.loc["broken.tif", "status"] == "failed" and "broken.tif" in table.loc["broken.tif", "reason"]
    assert table.loc["gone.tif", "status"] == "failed"
    assert (table.loc[["s0.tif", "s1.tif", "s2.tif"], "nuclei"] >= 0).all()
    assert table.loc["s0.tif", "model_sha256"] and table.loc["s0.tif", "tissue_mm2"] > 0
    jobs = list((out / ".cohort" / "jobs").glob("*_log.out"))
    assert len({p.name.split("_")[0] for p in jobs}) >= 1  # submitit ran the shards as jobs
    stamps = {k: (out / f"s{k}" / "done.json").stat().st_mtime_ns for k in range(3)}
    assert cli(words) == 1
    again = pd.read_csv(out / "cohort.csv").set_index("slide")
    assert sorted(again.index[again.status == "skipped"]) == ["s0.tif", "s1.tif", "s2.tif"]
    assert {k: (out / f"s{k}" / "done.json").stat().st_mtime_ns for k in range(3)} == stamps  # nothing twice
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("cohorts").experiment_id])
    assert len(runs) == 2 and runs[0].data.metrics["slides_failed"] == 2
    assert len(client.get_metric_history(runs[-1].info.run_id, "slide/nuclei")) == 3


def test_two_cohorts_into_one_folder_are_refused(cohort, trained_run, tmp_path, capsys):
    from nucleiseg.util.locking import exclusive

    out = tmp_path / "out"
    out.mkdir()
    with exclusive(out / LOCK, "another cohort"):
        assert cli(["predict", str(cohort), "--out", str(out), "--model", str(trained_run[3]), "--no-mlflow"]) == 2
    assert "in use by another process" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK]
