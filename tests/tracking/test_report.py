import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from nucleiseg.tracking.report import ReportError, table_one_order, write_report
from nucleiseg.tracking.study import DONE_TAG

TEST_METRICS = ("jaccard", "f1", "recall", "precision", "accuracy", "images_per_second")


def add_run(client, experiment, encoder, pretrained, seed, jaccard, losses, status="FINISHED", **extra):
    """A training run as train.py records it (tags, per-epoch losses, test metrics, the done tag)."""
    tags = {
        "encoder": encoder,
        "pretrained": str(pretrained).lower(),
        "head": extra.pop("head", "binary"),
        "seed": str(seed),
        "protocol": extra.pop("protocol", "paper"),
        "protocol_differences": extra.pop("differences", ""),
        "data_split": extra.pop("data_split", "paper-seed0"),
    }
    run = client.create_run(experiment, run_name=f"{encoder}-{pretrained}-{seed}", tags=tags)
    rid = run.info.run_id
    for epoch, (train, val) in enumerate(losses):
        client.log_metric(rid, "loss/train", train, step=epoch)
        client.log_metric(rid, "loss/val", val, step=epoch)
    if status == "FINISHED" and not extra.pop("incomplete", False):
        values = {"jaccard": jaccard, "f1": jaccard + 0.1, "recall": 0.8, "precision": 0.7, "accuracy": 0.9}
        values["images_per_second"] = extra.pop("speed", 100.0 + seed)
        values.update(extra)
        for name, value in values.items():
            client.log_metric(rid, f"test/{name}", value)
        client.set_tag(rid, DONE_TAG, "true")
    elif status != "FINISHED":
        client.set_tag(rid, "failure_reason", "NonFiniteLossError: non-finite training loss")
    client.set_terminated(rid, status)
    return rid


def make_study(uri: str, study: str) -> MlflowClient:
    """Three seeds of DenseNet-121 (ImageNet), two finished + one failed of the modified U-Net."""
    client = MlflowClient(uri)
    experiment = client.create_experiment(study)
    add_run(client, experiment, "densenet121", True, 0, 0.60, [(1.0, 1.2), (0.6, 0.8)], speed=30.0)
    add_run(client, experiment, "densenet121", True, 1, 0.70, [(0.8, 1.0), (0.4, 0.6)], speed=31.0)
    add_run(client, experiment, "densenet121", True, 2, 0.50, [(0.9, 1.1), (0.5, 0.7)], speed=32.0)
    add_run(client, experiment, "unet_bn", False, 0, 0.66, [(1.1, 1.3), (0.7, 0.9)], speed=130.0)
    add_run(client, experiment, "unet_bn", False, 1, 0.64, [(1.0, 1.2), (0.6, 0.8)], speed=128.0)
    add_run(client, experiment, "unet_bn", False, 2, 0.0, [(1.0, 1.2)], status="FAILED")
    return client


def test_report_tables_have_medians_ranges_counts_and_the_papers_values(tmp_path, tracking_uri):
    make_study(tracking_uri, "report_study")
    out = write_report(tracking_uri, "report_study", tmp_path / "report")
    table3 = pd.read_csv(out / "table3_metrics.csv").set_index("configuration")
    densenet, unet = table3.loc["DenseNet-121 (ImageNet)"], table3.loc["Modified U-Net (BatchNorm)"]
    assert densenet.jaccard == pytest.approx(0.60) and densenet.jaccard_iqr == pytest.approx(0.10)
    assert (densenet.jaccard_min, densenet.jaccard_max) == pytest.approx((0.50, 0.70))
    assert densenet.n == 3 and densenet.n_failed == 0
    assert unet.jaccard == pytest.approx(0.65) and unet.n == 2 and unet.n_failed == 1
    assert densenet.jaccard_paper == pytest.approx(0.669) and densenet.jaccard_diff == pytest.approx(0.60 - 0.669)
    assert bool(densenet.jaccard_in_range) and not bool(unet.jaccard_in_range)  # 0.662 outside [0.64, 0.66]
    assert unet.images_per_second_paper == pytest.approx(129.525) and bool(unet.images_per_second_in_range)
    assert list(table3.index) == [c for c in table_one_order() if c in table3.index]  # Table I order
    table2 = pd.read_csv(out / "table2_losses.csv").set_index("configuration")
    assert table2.loc["DenseNet-121 (ImageNet)", "train_loss"] == pytest.approx(0.5)
    assert table2.loc["DenseNet-121 (ImageNet)", "val_loss_paper"] == pytest.approx(0.431)
    for name in ("fig7_train_loss.png", "fig7_train_loss.svg", "fig8_val_loss.png", "fig8_val_loss.svg"):
        assert (out / name).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "5 finished with all their outputs" in report and "non-finite training loss" in report
    assert "| DenseNet-121 (ImageNet) |" in report and "0.600 [0.500-0.700] vs 0.669: -0.069 (inside)" in report
    claims = pd.read_csv(out / "claims.csv")
    # a ranking over 2 of the paper's 13 configurations proves nothing: not checkable, never "true"
    for word in ("fastest", "best Jaccard", "best recall"):
        claim = claims[claims.claim.str.contains(word)].iloc[0]
        assert pd.isna(claim.holds) and "2 of the 13 configurations" in claim.detail
    assert claims[claims.claim.str.contains("random initialisation")].holds.isna().all()  # no scratch rows here
    assert all(path.stat().st_size > 1 for path in out.glob("*.csv"))  # no 1-byte CSV of an empty table


def test_rank_agreement_over_the_published_rows(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("report_ranks")
    # three rows in the paper's Jaccard order (0.662 > 0.647 > 0.588), one seed each
    for encoder, pretrained, jaccard in (("unet_bn", False, 0.70), ("resnet50", True, 0.68), ("resnet50", False, 0.62)):
        add_run(client, experiment, encoder, pretrained, 0, jaccard, [(1.0, 1.0)])
    out = write_report(tracking_uri, "report_ranks", tmp_path / "r")
    agreement = pd.read_csv(out / "rank_agreement.csv").set_index("metric")
    assert agreement.loc["jaccard", "kendall_tau"] == pytest.approx(1.0) and agreement.loc["jaccard", "n_rows"] == 3
    claims = pd.read_csv(out / "claims.csv")
    resnet = claims[claims.claim.str.contains("for ResNet-50 ")].iloc[0]
    assert resnet.holds == True and "ImageNet 0.680 vs scratch 0.620" in resnet.detail  # noqa: E712


def test_a_study_off_the_papers_protocol_is_never_compared_silently(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("report_custom")
    add_run(
        client,
        experiment,
        "unet_bn",
        False,
        0,
        0.76,
        [(1.0, 1.0)],
        protocol="custom",
        differences="data.name=synthetic (paper: paper); trainer.max_epochs=3 (paper: 20)",
    )
    out = write_report(tracking_uri, "report_custom", tmp_path / "r")
    table3 = pd.read_csv(out / "table3_metrics.csv")
    assert not [c for c in table3.columns if c.endswith(("_paper", "_diff", "_in_range"))]
    report = (out / "report.md").read_text()
    assert "Not the paper's protocol: no comparison with the published values" in report
    assert "trainer.max_epochs=3 (paper: 20)" in report and "vs 0.662" not in report


def test_killed_and_incomplete_runs_are_not_counted_finished(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("report_killed")
    add_run(client, experiment, "unet_bn", False, 0, 0.7, [(1.0, 1.0)])
    add_run(client, experiment, "unet_bn", False, 1, 0.7, [(1.0, 1.0)], status="KILLED")
    add_run(client, experiment, "unet_bn", False, 2, 0.7, [(1.0, 1.0)], incomplete=True)  # FINISHED, no outputs
    table3 = pd.read_csv(write_report(tracking_uri, "report_killed", tmp_path / "r") / "table3_metrics.csv")
    row = table3.iloc[0]
    assert (row.n, row.n_killed, row.n_other, row.n_failed) == (1, 1, 1, 0)
    only_killed = client.create_experiment("report_only_killed")
    add_run(client, only_killed, "unet_bn", False, 0, 0.7, [(1.0, 1.0)], status="KILLED")
    with pytest.raises(ReportError, match="no finished run with all its test outputs.*KILLED"):
        write_report(tracking_uri, "report_only_killed", tmp_path / "k")


def test_spread_separates_the_test_split_from_the_training_seed(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("report_spread")
    # two splits 0.10 apart, seeds +-0.01 around each split's mean
    for split, centre in (("paper-seed0", 0.70), ("paper-seed1", 0.60)):
        for seed, offset in enumerate((-0.01, 0.0, 0.01)):
            add_run(client, experiment, "unet_bn", False, seed, centre + offset, [(1.0, 1.0)], data_split=split)
    out = write_report(tracking_uri, "report_spread", tmp_path / "r")
    spread = pd.read_csv(out / "spread_sources.csv").iloc[0]
    assert spread.n_splits == 2 and spread.n_runs == 6
    assert spread.between_splits_sd == pytest.approx(0.1 / 2**0.5)  # SD of the split means 0.70 and 0.60
    assert spread.within_split_seed_sd == pytest.approx(0.01)
    assert (spread.split_medians_min, spread.split_medians_max) == pytest.approx((0.60, 0.70))
    assert "Sources of spread" in (out / "report.md").read_text()


def test_medians_go_back_to_mlflow_as_summary_runs(tmp_path, tracking_uri):
    client = make_study(tracking_uri, "report_summaries")
    write_report(tracking_uri, "report_summaries", tmp_path / "r1")
    write_report(tracking_uri, "report_summaries", tmp_path / "r2")  # replaces, never duplicates
    experiment = client.get_experiment_by_name("report_summaries").experiment_id
    summaries = client.search_runs([experiment], filter_string="tags.summary = 'true'")
    assert sorted(r.data.tags["configuration"] for r in summaries) == [
        "DenseNet-121 (ImageNet)",
        "Modified U-Net (BatchNorm)",
    ]
    densenet = next(r for r in summaries if r.data.tags["configuration"].startswith("DenseNet"))
    assert densenet.data.metrics["jaccard/median"] == pytest.approx(0.60)
    assert densenet.data.metrics["jaccard/iqr"] == pytest.approx(0.10) and densenet.data.metrics["n"] == 3
    per_seed = [r for r in client.search_runs([experiment]) if "summary" not in r.data.tags]
    assert len(per_seed) == 6  # untouched


def test_loss_curves_use_whole_epochs(tmp_path, monkeypatch):
    import nucleiseg.tracking.figures as figures

    seen = []
    monkeypatch.setattr(figures, "save", lambda figure, stem, dpi: seen.append(figure))
    curves = pd.DataFrame({"configuration": ["U-Net"] * 3, "epoch": [0, 1, 2], "value": [1.0, 0.8, 0.7]})
    figures.plot_curves(curves, "t", "loss", tmp_path / "f")
    ticks = seen[0].axes[0].get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)


def test_existing_output_is_not_overwritten_unless_asked(tmp_path, tracking_uri, monkeypatch):
    make_study(tracking_uri, "report_keep")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ReportError, match="--overwrite"):
        write_report(tracking_uri, "report_keep", out)
    # a folder no report created is refused even with --overwrite: `--out . --overwrite` empties nothing
    with pytest.raises(ReportError, match="not created by nucleiseg report"):
        write_report(tracking_uri, "report_keep", out, overwrite=True)
    monkeypatch.chdir(out)
    with pytest.raises(ReportError, match="not created by nucleiseg report"):
        write_report(tracking_uri, "report_keep", ".", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "precious"
    # a report's own folder: --overwrite replaces the report's files, and keeps what the user put beside them
    report = write_report(tracking_uri, "report_keep", tmp_path / "report")
    (report / "notes.txt").write_text("my reading of the tables")
    (report / "fig9_predictions.png").write_bytes(b"an earlier figure")  # as if an earlier report wrote it
    marker = report / ".nucleiseg-report.json"
    marker.write_text(marker.read_text().replace('"files": [', '"files": ["fig9_predictions.png", '))
    write_report(tracking_uri, "report_keep", report, overwrite=True)
    assert (report / "notes.txt").read_text() == "my reading of the tables"
    assert not (report / "fig9_predictions.png").exists() and (report / "report.md").is_file()


def test_overwrite_removes_only_the_reports_own_files_inside_its_folder(tmp_path, tracking_uri, caplog):
    """A received report folder whose marker names files outside it (a path up, an absolute path, a link out of
    the folder under a name the report writes): --overwrite touches none of them and says which it ignored."""
    import json
    import logging

    make_study(tracking_uri, "report_marker")
    report = write_report(tracking_uri, "report_marker", tmp_path / "received" / "report")
    victim = tmp_path / "received" / "victim.txt"
    victim.write_text("keep")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "victim").write_text("keep")
    (elsewhere / "linked.csv").write_text("keep")
    (report / "fig9_predictions.png").symlink_to(elsewhere / "linked.csv")  # not written by this study's report
    (report / "notes.txt").write_text("mine")
    marker = report / ".nucleiseg-report.json"
    files = json.loads(marker.read_text())["files"]
    hostile = ["../victim.txt", str(elsewhere / "victim"), "fig9_predictions.png", "notes.txt", "", ".", ".."]
    marker.write_text(json.dumps({"files": files + hostile}))
    with caplog.at_level(logging.WARNING, logger="nucleiseg"):
        write_report(tracking_uri, "report_marker", report, overwrite=True)
    assert victim.read_text() == "keep" and (elsewhere / "victim").read_text() == "keep"
    assert (elsewhere / "linked.csv").read_text() == "keep" and (report / "notes.txt").read_text() == "mine"
    assert (report / "report.md").is_file() and (report / "fig9_predictions.png").is_symlink()
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "../victim.txt" in warned and str(elsewhere / "victim") in warned and "notes.txt" in warned
    assert "fig9_predictions.png" in warned
    assert json.loads(marker.read_text())["files"] == sorted(files)  # the new marker lists only what it wrote


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


def test_paper_claims_are_checked_over_all_their_configurations(tmp_path, tracking_uri):
    """All 13 configurations of Table III, one seed each: DenseNet-121 (ImageNet) best in Jaccard, the modified
    U-Net fastest with the best recall: the claims hold; the same study without one row: not checkable."""
    from nucleiseg.tracking.paper import paper_rows, read_published

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("report_claims")
    published = read_published()
    for index, label in enumerate(paper_rows()):
        row = published.loc[label]
        pretrained = str(row.pretrained).lower() == "true"
        jaccard = 0.8 if label == "DenseNet-121 (ImageNet)" else 0.5 + 0.01 * index
        speed = 200.0 if row.encoder == "unet_bn" else 50.0
        recall = 0.95 if row.encoder == "unet_bn" else 0.8
        add_run(client, experiment, row.encoder, pretrained, 0, jaccard, [(1.0, 1.0)], speed=speed, recall=recall)
    claims = pd.read_csv(write_report(tracking_uri, "report_claims", tmp_path / "r") / "claims.csv")
    for word in ("fastest", "best Jaccard", "best recall"):
        claim = claims[claims.claim.str.contains(word)].iloc[0]
        assert claim.holds == True, claim.detail  # noqa: E712
    assert "(of 13 configurations)" in claims[claims.claim.str.contains("best Jaccard")].iloc[0].detail


def test_runs_with_other_settings_are_not_pooled_as_seeds(tmp_path, tracking_uri):
    """Seeds 0 and 1 of a configuration and one run with optimizer.lr=0.001 (named as train.py names it): two
    rows, n=2 and n=1, never one row with n=3."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("report_variants")
    for seed, jaccard in ((0, 0.60), (1, 0.62)):
        rid = add_run(client, experiment, "unet_bn", False, seed, jaccard, [(1.0, 1.0)])
        client.update_run(rid, status="FINISHED", name=f"unet_bn-scratch-seed{seed}")
    rid = add_run(client, experiment, "unet_bn", False, 0, 0.40, [(1.0, 1.0)])
    client.update_run(rid, status="FINISHED", name="unet_bn-scratch-seed0-optimizer.lr=0.001")
    table = pd.read_csv(write_report(tracking_uri, "report_variants", tmp_path / "r") / "table3_metrics.csv")
    rows = table.set_index("configuration")
    assert rows.loc["Modified U-Net (BatchNorm)", "n"] == 2
    assert rows.loc["Modified U-Net (BatchNorm)", "jaccard"] == pytest.approx(0.61)
    assert rows.loc["Modified U-Net (BatchNorm) [optimizer.lr=0.001]", "n"] == 1
    # runs recorded with their configuration's hash: a changed YAML value is another configuration too
    for seed, key in ((2, "aaaa1111"), (3, "bbbb2222")):
        rid = add_run(
            client,
            experiment,
            "resnet50",
            False,
            seed,
            0.5,
            [(1.0, 1.0)],
        )
        client.set_tag(rid, "configuration_hash", key)
        client.set_tag(rid, "variant", "")
    table = pd.read_csv(write_report(tracking_uri, "report_variants", tmp_path / "r2") / "table3_metrics.csv")
    assert sorted(c for c in table.configuration if c.startswith("ResNet-50")) == [
        "ResNet-50 (config aaaa1111)",
        "ResNet-50 (config bbbb2222)",
    ]


def test_the_heads_study_has_its_table_ranking_and_stability(tmp_path, tracking_uri):
    """Four heads x three seeds, each scored on its own method: medians and IQR per head, the ranking with each
    gap against the seed spread, and Kendall's tau between the seeds' rankings (two seeds agree, one swaps)."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("report_heads")
    aji = {  # head -> AJI of seeds 0, 1, 2 on its own method
        ("binary", "watershed"): (0.55, 0.56, 0.54),
        ("distance", "distance"): (0.60, 0.61, 0.62),
        ("hv", "hover"): (0.63, 0.64, 0.58),
        ("stardist", "stardist"): (0.50, 0.52, 0.51),
    }
    for (head, method), values in aji.items():
        for seed, value in enumerate(values):
            own = {f"aji_{method}": value, f"aji_plus_{method}": value + 0.01, f"pq_{method}": value - 0.02,
                   f"object_f1_{method}": value + 0.1, f"n_predicted_nuclei_{method}": 1800.0 + seed,
                   f"n_true_nuclei_{method}": 1883.0}  # fmt: skip
            own.setdefault("aji_watershed", 0.5)  # what the other heads score with the watershed too
            add_run(client, experiment, "unet_bn", False, seed, 0.7, [(1.0, 1.1)], head=head, protocol="other", **own)
    out = write_report(tracking_uri, "report_heads", tmp_path / "r")
    heads = pd.read_csv(out / "table5_heads.csv")
    assert list(heads["head"]) == ["hv", "distance", "binary", "stardist"] and set(heads.n) == {3}
    assert heads.set_index("head").loc["hv", "aji"] == pytest.approx(0.63)
    assert heads.set_index("head").loc["distance", "aji_iqr"] == pytest.approx(0.01)
    assert heads.set_index("head").loc["binary", "count_error"] == pytest.approx(1801 / 1883 - 1)
    ranking = pd.read_csv(out / "table6_head_ranking.csv").set_index("head")
    assert ranking.loc["hv", "rank"] == 1 and ranking.loc["hv", "gap"] == pytest.approx(0.02)
    assert ranking.loc["hv", "beyond_spread"] == "no"  # a 0.02 gap, inside hv's IQR of 0.03: not beyond the seeds
    assert ranking.loc["binary", "beyond_spread"] == "yes"  # binary 0.55 is 0.04 over stardist 0.51: beyond their IQRs
    report = (out / "report.md").read_text()
    # seeds 0 and 1 rank hv > distance > binary > stardist; seed 2 puts distance above hv: tau 1, 2/3, 2/3
    assert "Ways of separating nuclei, by head" in report and "rankings): 0.78" in report


def test_a_head_with_one_seed_has_no_spread_to_beat(tmp_path, tracking_uri):
    """Two heads, one seed each: the gap is given, but whether it is beyond the seed spread is unknown (not "yes"
    against an IQR of 0), and the ranking's stability is said to be unmeasured."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("report_heads_one_seed")
    for head, method, value in (("binary", "watershed", 0.60), ("distance", "distance", 0.62)):
        own = {f"aji_{method}": value, f"aji_plus_{method}": value, f"pq_{method}": value,
               f"object_f1_{method}": value, f"n_predicted_nuclei_{method}": 1800.0,
               f"n_true_nuclei_{method}": 1883.0}  # fmt: skip
        add_run(client, experiment, "unet_bn", False, 0, 0.7, [(1.0, 1.1)], head=head, protocol="other", **own)
    out = write_report(tracking_uri, "report_heads_one_seed", tmp_path / "r")
    ranking = pd.read_csv(out / "table6_head_ranking.csv").set_index("head")
    assert ranking.loc["distance", "beyond_spread"] == "unknown (1 seed)"
    assert ranking.loc["distance", "gap"] == pytest.approx(0.02)
    assert pd.read_csv(out / "table5_heads.csv")["aji_iqr"].isna().all()  # one seed: no IQR
    assert "Ranking stability over seeds: not measured" in (out / "report.md").read_text()
