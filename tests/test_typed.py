"""Typed nuclei end to end, as a lab would do it: classified nuclei exported from QuPath -> `nucleiseg data
from-qupath` -> a typed model trained (the class branch on a head) -> classes well above chance on held-out tiles ->
predict writes the same class names into the GeoJSON, the tables and the counts."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nucleiseg.cli import main as cli
from nucleiseg.config.compose import compose
from nucleiseg.data.synthetic import TYPED_CLASSES, TypedSyntheticSpec, synthetic_typed_tile
from nucleiseg.inference.export import geojson_bytes, geojson_nuclei
from nucleiseg.training.identity import run_folder
from nucleiseg.training.run import run

CLASSES = [kind.name for kind in TYPED_CLASSES]  # tumour, lymphocyte, stroma
TILES, SIZE = 24, 96  # the typed quick start's data: 24 tiles of 96 px


def qupath_exports(folder):
    """Synthetic typed tiles with their nuclei as QuPath exports classified detections (File > Export objects as
    GeoJSON: polygons in the image's pixels, ``classification.name``): what a pathologist hands over."""
    folder.mkdir()
    spec = TypedSyntheticSpec(SIZE, SIZE, n_nuclei=14)
    for k in range(TILES):
        image, instances, types = synthetic_typed_tile(spec, 700 + k)
        Image.fromarray(image).save(folder / f"tile_{k:02d}.png")
        names = {int(n): CLASSES[int(types[instances == n][0]) - 1] for n in np.unique(instances[instances > 0])}
        table = pd.DataFrame({"nucleus_id": list(names), "type": list(names.values())})
        (folder / f"tile_{k:02d}.geojson").write_bytes(geojson_bytes(geojson_nuclei(instances, table, classes=CLASSES)))
    return folder


@pytest.fixture(scope="module")
def typed_run(tmp_path_factory, tracking_uri):
    root = tmp_path_factory.mktemp("typed")
    exports = qupath_exports(root / "exports")
    assert cli(["data", "from-qupath", str(exports), "--to", str(root / "labelled"), "--mpp", "0.5"]) == 0
    overrides = [
        "experiment=typed_quickstart",
        "data=typed_folder",
        f"data.sources.typed_folder.root={root / 'labelled'}",
        "data.protocol.n_test=6",
        f"data.protocol.image_size={SIZE}",  # the tiles at their own 0.5 um/px, whole
        f"paths.root_dir={root}",
        f"logger.tracking_uri={tracking_uri}",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=14",  # the typed quick start's budget
        "progress_bar=none",
        "logger.overlays=0",
        "study=typed_round_trip",
    ]
    cfg = compose(overrides)
    metrics = run(cfg)
    done = json.loads((run_folder(cfg) / "done.json").read_text())
    return root, cfg, metrics, done["test_checkpoint"]


def test_a_qupath_export_becomes_a_typed_training_set_with_its_classes(typed_run):
    root, cfg, _, _ = typed_run
    classes = json.loads((root / "labelled" / "classes.json").read_text())["classes"]
    assert sorted(classes) == sorted(CLASSES)
    from nucleiseg.data.prepare import load_manifest, prepared_path

    folder = prepared_path(cfg.data)
    assert load_manifest(folder)["classes"] == classes
    types, masks = np.load(folder / "train" / "types.npy"), np.load(folder / "train" / "masks.npy")
    assert types.shape == masks.shape and types.max() == len(classes)
    for labels, kinds in zip(masks, types, strict=True):  # flips and rotations kept one class per nucleus
        for label in np.unique(labels[labels > 0]):
            assert len(np.unique(kinds[labels == label])) == 1
        assert not kinds[labels == 0].any()


def test_a_typed_model_classifies_well_above_chance(typed_run):
    """Three classes with distinct size, shape and stain: chance is about 0.33-0.4 per class."""
    _, _, metrics, _ = typed_run
    assert metrics["test/type_accuracy"] > 0.8 and metrics["test/f_d"] > 0.5
    for name in CLASSES:
        assert metrics[f"test/f_c_{name}"] > 0.45, name
        assert metrics[f"test/n_true_{name}"] > 0
    assert 0 < metrics["test/mpq_plus"] <= 1 and 0 < metrics["test/pannuke_mpq"] <= 1


def test_predict_writes_the_classes_into_the_geojson_tables_and_counts(typed_run, tmp_path):
    root, _, _, checkpoint = typed_run
    out = tmp_path / "pred"
    assert cli(["predict", str(root / "exports" / "tile_00.png"), "--model", checkpoint, "--out", str(out)]) == 0
    folder = out / "tile_00"
    features = json.loads((folder / "nuclei.geojson").read_text())["features"]
    names = {f["properties"]["classification"]["name"] for f in features}
    assert features and names <= set(CLASSES) and "Nucleus" not in names
    table = pd.read_csv(folder / "features.csv")
    assert set(table["type"]) == names and table["type_probability"].between(0, 1).all()
    counts = json.loads((folder / "done.json").read_text())["nuclei_by_class"]
    assert sorted(counts) == sorted(CLASSES) and sum(counts.values()) == len(table)


def test_the_report_has_the_nuclei_by_class(typed_run, tmp_path, tracking_uri):
    from nucleiseg.tracking.report import write_report

    out = write_report(tracking_uri, "typed_round_trip", tmp_path / "report")
    table = pd.read_csv(out / "table7_classes.csv")
    assert sorted(table["class"]) == sorted(CLASSES) and table["f_c"].between(0, 1).all()
    assert "## Nuclei by class" in (out / "report.md").read_text()


def test_evaluate_json_reports_the_scores_by_class(typed_run, capsys):
    _, _, metrics, checkpoint = typed_run
    assert cli(["evaluate", checkpoint, "--json", "--no-mlflow"]) == 0
    summary = json.loads(capsys.readouterr().out)["classes"]
    assert sorted(summary["by_class"]) == sorted(CLASSES)
    # the same held-out split, the same model: the CLI's scores are the training run's test scores
    assert summary["type_accuracy"] == pytest.approx(metrics["test/type_accuracy"], abs=1e-6)
    for name in CLASSES:
        assert summary["by_class"][name]["n_true"] == metrics[f"test/n_true_{name}"]
