import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from nucleiseg.tracking.report import ReportError, table_one_order, write_report


def make_study(uri: str, study: str) -> MlflowClient:
    """Three seeds of DenseNet-121 (ImageNet), two finished + one failed of the modified U-Net."""
    client = MlflowClient(uri)
    experiment = client.create_experiment(study)

    def add(configuration, seed, jaccard, losses, status="FINISHED"):
        run = client.create_run(
            experiment, run_name=f"{configuration}-{seed}", tags={"configuration": configuration, "seed": str(seed)}
        )
        rid = run.info.run_id
        for epoch, (train, val) in enumerate(losses):
            client.log_metric(rid, "train/loss", train, step=epoch)
            client.log_metric(rid, "val/loss", val, step=epoch)
        if status == "FINISHED":
            for name, value in {
                "jaccard": jaccard,
                "f1": jaccard + 0.1,
                "recall": 0.8,
                "precision": 0.7,
                "accuracy": 0.9,
                "images_per_second": 100.0 + seed,
            }.items():
                client.log_metric(rid, f"test/{name}", value)
        else:
            client.set_tag(rid, "failure_reason", "NonFiniteLossError: non-finite training loss")
        client.set_terminated(rid, status)

    add("DenseNet-121 (ImageNet)", 0, 0.60, [(1.0, 1.2), (0.6, 0.8)])
    add("DenseNet-121 (ImageNet)", 1, 0.70, [(0.8, 1.0), (0.4, 0.6)])
    add("DenseNet-121 (ImageNet)", 2, 0.50, [(0.9, 1.1), (0.5, 0.7)])
    add("Modified U-Net (BatchNorm)", 0, 0.66, [(1.1, 1.3), (0.7, 0.9)])
    add("Modified U-Net (BatchNorm)", 1, 0.64, [(1.0, 1.2), (0.6, 0.8)])
    add("Modified U-Net (BatchNorm)", 2, 0.0, [(1.0, 1.2)], status="FAILED")
    return client


def test_report_tables_have_medians_iqr_counts_and_the_papers_values(tmp_path, tracking_uri):
    make_study(tracking_uri, "report_study")
    out = write_report(tracking_uri, "report_study", tmp_path / "report")
    table3 = pd.read_csv(out / "table3_metrics.csv").set_index("configuration")
    densenet, unet = table3.loc["DenseNet-121 (ImageNet)"], table3.loc["Modified U-Net (BatchNorm)"]
    assert densenet.jaccard == pytest.approx(0.60) and densenet.jaccard_iqr == pytest.approx(0.10)
    assert densenet.n == 3 and densenet.n_failed == 0
    assert unet.jaccard == pytest.approx(0.65) and unet.n == 2 and unet.n_failed == 1
    assert densenet.jaccard_paper == pytest.approx(0.669) and densenet.jaccard_diff == pytest.approx(0.60 - 0.669)
    assert unet.images_per_second_paper == pytest.approx(129.5)
    assert list(table3.index) == [c for c in table_one_order() if c in table3.index]  # Table I order
    table2 = pd.read_csv(out / "table2_losses.csv").set_index("configuration")
    assert table2.loc["DenseNet-121 (ImageNet)", "train_loss"] == pytest.approx(0.5)
    assert table2.loc["DenseNet-121 (ImageNet)", "val_loss"] == pytest.approx(0.7)
    for name in ("fig7_train_loss.png", "fig7_train_loss.svg", "fig8_val_loss.png", "fig8_val_loss.svg"):
        assert (out / name).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "5 finished, 1 failed" in report and "non-finite training loss" in report
    assert "| DenseNet-121 (ImageNet) |" in report


def test_existing_output_is_not_overwritten_unless_asked(tmp_path, tracking_uri):
    make_study(tracking_uri, "report_keep")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ReportError, match="--overwrite"):
        write_report(tracking_uri, "report_keep", out)
    assert (out / "notes.txt").read_text() == "precious"
    write_report(tracking_uri, "report_keep", out, overwrite=True)
    assert (out / "report.md").is_file() and not (out / "notes.txt").exists()


def test_no_finished_run_gives_a_clear_message(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("report_empty")
    run = client.create_run(experiment, tags={"configuration": "U-Net"})
    client.set_terminated(run.info.run_id, "FAILED")
    with pytest.raises(ReportError, match="no finished run.*FAILED"):
        write_report(tracking_uri, "report_empty", tmp_path / "r")
    with pytest.raises(ReportError, match="no MLflow experiment named 'nothing_here'"):
        write_report(tracking_uri, "nothing_here", tmp_path / "r")
    assert not (tmp_path / "r").exists()
