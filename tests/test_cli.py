import json
import subprocess
import sys

from nucleiseg.cli import main


def test_inspect_json_summarises_a_dataset(tnbc_root, capsys):
    assert main(["data", "inspect", "tnbc", str(tnbc_root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == 7 and summary["n_masks"] == 7 and summary["n_patients"] == 3
    assert summary["sizes"] == {"64x64": 7}
    assert summary["n_nuclei"] == sum(entry["n_nuclei"] for entry in summary["images"]) > 7
    assert summary["images"][0] == {**summary["images"][0], "name": "01_1", "patient": "slide01"}


def test_inspect_monuseg(monuseg_root, capsys):
    assert main(["data", "inspect", "monuseg", str(monuseg_root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 4


def test_problems_exit_non_zero_with_a_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "inspect", "tnbc", str(tmp_path / "empty")]) == 2
    assert "expected the TNBC layout" in capsys.readouterr().err


def test_prepare_uses_the_training_config(tmp_path, capsys):
    assert main(["data", "prepare", "data=synthetic", f"paths.root_dir={tmp_path}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["counts"] == {"train": 30, "val": 6, "test": 6}
    assert main(["data", "prepare", "data=synthetic", "data.protocol.nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_console_script_help_is_available():
    result = subprocess.run([sys.executable, "-m", "nucleiseg.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "data" in result.stdout
