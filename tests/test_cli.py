import json
import subprocess
import sys

import pytest

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


def test_value_choices_are_the_codes_own():
    """config_checks keeps light copies of the code's choices (so they are checked before torch loads)."""
    from nucleiseg.config.checks import CHOICES, ENCODER_NAMES
    from nucleiseg.data.split import SPLIT_MODES
    from nucleiseg.evaluation.tuning import BALANCES, OBJECTIVES
    from nucleiseg.models.factory import ENCODERS
    from nucleiseg.models.heads import HEADS
    from nucleiseg.postprocess.instances import METHODS

    assert ENCODER_NAMES == tuple(ENCODERS) and CHOICES["model.head"] == tuple(HEADS)
    assert set(CHOICES["postprocess.method"]) == {"auto", *METHODS}
    assert CHOICES["data.protocol.split"] == SPLIT_MODES and CHOICES["tune.objective"] == OBJECTIVES
    assert CHOICES["tune.balance"] == BALANCES


def _train(*words, timeout=60):
    from tests.conftest import run_train

    return run_train(*words, timeout=timeout)


def test_a_wrong_value_is_refused_before_the_heavy_imports_with_the_closest_choice():
    result = _train("encoder=resnet-50")
    assert result.returncode == 2 and "did you mean resnet50?" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    swept = _train("-m", "encoder=resnet50,densenet12", "pretrained=true,false")
    assert swept.returncode == 2 and "did you mean densenet121?" in swept.stderr
    assert _train("threshold=1.5").stderr.strip() == "error: threshold=1.5: expected a number between 0 and 1"
    assert "expected true or false" in _train("pretrained=maybe").stderr


def test_cli_option_combinations_and_values_fail_fast(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise AssertionError("torch was imported before the options were checked")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert main(["evaluate", "--model", "x.ckpt", "--images", "imgs"]) == 2
    assert "--images and --masks go together" in capsys.readouterr().err
    assert main(["predict", "a.png", "--out", "o", "postprocess.method=watershd"]) == 2
    assert "did you mean watershed?" in capsys.readouterr().err


def test_every_option_has_help_and_each_command_shows_examples():
    import argparse

    from nucleiseg.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        assert command.epilog and command.epilog.startswith("examples:"), name
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                assert action.help, f"{name} {action.option_strings or action.dest}"
    shown = commands["predict"].format_help()
    assert "--model NAME|PATH|URL" in shown and "(default:" in shown


@pytest.mark.parametrize(
    ("words", "named"),
    [
        (["benchmark", "--image-size", "0"], "--image-size 0"),
        (["benchmark", "--image-size", "-64"], "--image-size -64"),
        (["benchmark", "--iterations", "0"], "--iterations 0"),
        (["benchmark", "--train-steps", "-1"], "--train-steps -1"),
        (["benchmark", "--infer-batch", "0"], "--infer-batch 0"),
        (["benchmark", "--warmup", "-1"], "--warmup -1"),
        (["benchmark", "--loop-epochs", "-2"], "--loop-epochs -2"),
        (["benchmark", "--suite", "gpu", "--sweep-epochs", "0"], "--sweep-epochs 0"),
        (["benchmark", "--suite", "gpu", "--slide-size", "-5"], "--slide-size -5"),
        (["benchmark-slide", "--sizes", "abc"], "--sizes abc"),
        (["benchmark-slide", "--sizes", "10000,0"], "--sizes 10000,0"),
        (["benchmark-slide", "--sizes", ""], "--sizes"),
        (["benchmark-slide", "--tissue", "0"], "--tissue 0"),
        (["benchmark-slide", "--tissue", "1.5"], "--tissue 1.5"),
    ],
)
def test_benchmark_numbers_out_of_range_are_one_line_errors(words, named, capsys, monkeypatch):
    import nucleiseg.benchmarks.output
    import nucleiseg.benchmarks.slide

    def measured(*args):
        raise AssertionError(f"{words} was measured")

    monkeypatch.setattr(nucleiseg.benchmarks.output, "run_benchmark", measured)
    monkeypatch.setattr(nucleiseg.benchmarks.slide, "run_slide_benchmark", measured)
    assert main(words) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "expected" in err and "Traceback" not in err


def test_relog_of_a_missing_folder_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default store (./mlflow.db) is made here
    (tmp_path / "run").mkdir()  # a run folder with nothing pending
    assert main(["relog", str(tmp_path / "run"), str(tmp_path / "gone")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"error: {tmp_path / 'gone'}: no such run folder"]
    assert "nothing pending" not in captured.out  # nothing is done before every folder is checked
    assert main(["relog", str(tmp_path / "run")]) == 0
    assert "nothing pending" in capsys.readouterr().out


def test_evaluate_says_where_its_results_are_logged(trained_run, tmp_path, monkeypatch, capsys):
    """The default store is a SQLite file in the current folder: the command says which file, by its full path."""
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--model", str(trained_run[3]), "logger.tracking_uri=sqlite:///here.db"]) == 0
    err = capsys.readouterr().err
    assert f"results logged to MLflow experiment 'evaluate' at sqlite:///{tmp_path / 'here.db'}" in err
    assert f"(the file {tmp_path / 'here.db'})" in err and (tmp_path / "here.db").is_file()


def test_the_logged_to_line_never_shows_a_password():
    from nucleiseg.tracking.mlflow_store import logged_to

    line = logged_to("postgresql://mlflow:secret@db:5432/mlflow", "cohorts")
    assert "secret" not in line and "postgresql://mlflow:***@db:5432/mlflow" in line
    assert logged_to("http://mlflow-host:5000", "cohorts").startswith(
        "results logged to MLflow experiment 'cohorts' at http://mlflow-host:5000; "
    )
