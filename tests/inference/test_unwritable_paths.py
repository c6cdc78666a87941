"""Folders nucleiseg cannot write (a read-only model cache, an export path elsewhere's) and export sizes the model
cannot take: one line naming the folder or option, never a traceback; predicting goes on without the cache."""

import logging
from pathlib import Path

import pytest
import torch

from nucleiseg.cli import main as cli
from nucleiseg.inference.checkpoint import write_safetensors
from nucleiseg.models import zoo
from nucleiseg.models.factory import create_model

HPARAMS = {"encoder": "unet_bn", "unet_widths": [2, 4, 8, 16, 32], "head": "binary"}


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder this process cannot write: read-only by its mode, or (for root, whom modes do not stop) a sysfs
    folder, which refuses even root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not _writable(folder):
        yield folder / "cache"
    elif Path("/sys/kernel").is_dir() and not _writable(Path("/sys/kernel")):
        yield Path("/sys/kernel/nucleiseg-cache")
    else:
        pytest.skip("no folder here that this user cannot write")
    folder.chmod(0o755)


@pytest.fixture
def model_file(tmp_path) -> Path:
    torch.manual_seed(0)
    model = create_model("unet_bn", unet_widths=(2, 4, 8, 16, 32))
    return write_safetensors(tmp_path / "tiny.safetensors", model, HPARAMS)


def test_a_download_into_a_read_only_cache_is_one_line_naming_it(unwritable, monkeypatch):
    monkeypatch.setenv("NUCLEISEG_CACHE", str(unwritable))
    with pytest.raises(zoo.ModelError) as error:
        zoo.resolve("http://127.0.0.1:9/model.safetensors#sha256=" + "0" * 64)
    message = str(error.value)
    assert "\n" not in message and str(unwritable) in message and "NUCLEISEG_CACHE" in message
    assert "not writable" in message


def test_predicting_with_a_read_only_cache_runs_pytorch_after_one_warning(unwritable, monkeypatch, model_file, caplog):
    from nucleiseg.inference.onnx_backend import onnx_model

    monkeypatch.setenv("NUCLEISEG_CACHE", str(unwritable))
    torch.manual_seed(0)
    model = create_model("unet_bn", unet_widths=(2, 4, 8, 16, 32)).eval()
    with caplog.at_level(logging.INFO, logger="nucleiseg"):
        assert onnx_model(model, "key", 1) is model
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and str(unwritable) in warned[0] and "not writable" in warned[0]
    assert "using PyTorch" in warned[0] and "\n" not in warned[0]


def test_an_unwritable_export_path_is_one_line(unwritable, model_file, capsys):
    out = unwritable.parent / "nuclei.onnx"  # in a folder that exists, and that this process cannot write
    for command in (["export", "--model", str(model_file), "--format", "onnx"], ["export-onnx", str(model_file)]):
        assert cli([*command, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert f"--out {out}" in err and "cannot write" in err
        assert not out.exists()


@pytest.mark.parametrize("command", ["export --format torchscript", "export --format onnx", "export-onnx"])
def test_an_export_size_that_is_not_a_multiple_of_32_is_refused(tmp_path, model_file, capsys, command):
    out = tmp_path / "nuclei.out"
    words = command.split() + (["--model", str(model_file)] if command.startswith("export ") else [str(model_file)])
    for size in ("100", "0"):
        assert cli([*words, "--out", str(out), "--image-size", size]) == 2
        err = capsys.readouterr().err
        assert f"--image-size {size}" in err and "multiple of 32" in err and len(err.strip().splitlines()) == 1
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert cli([*words, "--out", str(out), "--image-size", "64"]) == 0


def test_the_export_help_says_which_sizes_work(capsys):
    with pytest.raises(SystemExit):
        cli(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "multiple of 32" in help_text and "any size works" not in help_text
