"""Cohorts of slides through submitit's local executor (the SLURM code path on this machine)."""

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


def test_reading_a_cohort_names_missing_and_duplicate_slides(cohort):
    entries, problems = read_cohort([str(cohort)])
    assert [e.path.name for e in entries] == ["s0.tif", "s1.tif", "s2.tif", "broken.tif"]
    reasons = {name.rsplit("/", 1)[-1]: why for name, why in problems}
    assert "no such file (row 6 of cohort.csv)" in reasons["gone.tif"] and "listed twice" in reasons["s1.tif"]


def test_a_cohort_in_two_slurm_local_jobs_finishes_every_good_slide_once(cohort, trained_run, tmp_path, tracking_uri):
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
