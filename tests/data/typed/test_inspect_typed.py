import json

from nucleiseg.data.inspect import inspect_dataset
from tests.data.typed.formats import write_conic, write_consep, write_lizard, write_monusac, write_pannuke


def test_pannuke_counts_per_class_and_per_fold_are_exact(tmp_path):
    write_pannuke(tmp_path)
    summary = inspect_dataset("pannuke", tmp_path)
    assert summary["n_images"] == 5 and summary["n_patients"] == 3 and summary["sizes"] == {"256x256": 5}
    assert summary["per_class"] == {"neoplastic": 2, "inflammatory": 2, "connective": 1, "dead": 2, "epithelial": 3}
    assert summary["n_nuclei"] == 10 and summary["unknown_class"] == 0
    assert {fold: (t["n_images"], t["n_nuclei"]) for fold, t in summary["per_fold"].items()} == {
        "1": (2, 5),
        "2": (2, 2),
        "3": (1, 3),
    }
    assert summary["per_fold"]["3"]["per_class"]["epithelial"] == 2
    assert summary["microns_per_pixel"] == 0.25 and summary["licence"].startswith("CC BY-NC-SA 4.0")
    assert summary["tissues"] == {"Breast": 3, "Colon": 2} and summary["tissue"] is None
    assert summary["images"][0]["per_class"]["neoplastic"] == 2 and summary["images"][0]["fold"] == "1"


def test_consep_counts_after_the_merge(tmp_path):
    write_consep(tmp_path)
    summary = inspect_dataset("consep", tmp_path)
    assert summary["per_class"] == {"other": 1, "inflammatory": 2, "epithelial": 3, "spindle-shaped": 3}
    assert summary["per_split"]["test"]["per_class"] == {
        "other": 0,
        "inflammatory": 1,
        "epithelial": 1,
        "spindle-shaped": 0,
    }
    assert "unverified" in summary["licence"]


def test_lizard_cli_says_colon_pixel_size_and_licence(tmp_path, capsys):
    from nucleiseg.cli import main as cli

    write_lizard(tmp_path)
    assert cli(["data", "inspect", "lizard", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("2 images, 2 patients, sizes {'48x48': 2}, 6 nuclei")
    assert out[1] == "classes: neutrophil 1, epithelial 1, lymphocyte 1, plasma 1, eosinophil 1, connective 1"
    assert "pixel size 0.5 um/px" in out and "tissue: colon" in out
    assert any(line.startswith("licence: CC BY-NC-SA 4.0") for line in out)
    assert cli(["data", "inspect", "conic", str(tmp_path / "missing"), "--json"]) != 0


def test_conic_and_monusac_json(tmp_path, capsys):
    from nucleiseg.cli import main as cli

    write_conic(tmp_path / "conic")
    assert cli(["data", "inspect", "conic", str(tmp_path / "conic"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_nuclei"] == 6 and summary["n_patients"] == 2 and summary["tissue"] == "colon"
    assert summary["per_class"] == {k: 1 for k in summary["classes"]}
    write_monusac(tmp_path / "monusac")
    summary = inspect_dataset("monusac", tmp_path / "monusac")
    assert summary["ambiguous_regions"] == 1 and summary["n_patients"] == 2
    assert summary["per_class"] == {"epithelial": 2, "lymphocyte": 3, "neutrophil": 1, "macrophage": 1}
    assert {k: v["n_nuclei"] for k, v in summary["per_split"].items()} == {"test": 2, "train": 5}
