"""The model nucleiseg ships: in the wheel with its checksum, used when no model is named, exported for QuPath and
other tools, and never loaded by `import nucleiseg` or `--help`."""

import hashlib
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from nucleiseg.cli import main as cli
from nucleiseg.models import zoo
from tests.conftest import REPO, SHARED_DATA, requires_shared_data


def test_the_registry_names_a_shipped_default_model_with_its_card_and_licence():
    default, entries = zoo.registry()
    entry = entries[default]
    assert entry.shipped and entry.size_bytes <= 10_000_000
    assert zoo.file_sha256(zoo.PRETRAINED / entry.file) == entry.sha256
    card = (zoo.PRETRAINED / entry.card).read_text()
    assert "CC BY-NC-SA 4.0" in card and "python train.py experiment=release_cpu" in card
    assert "non-commercial" in (zoo.PRETRAINED / "LICENSE").read_text().lower()
    assert entry.microns_per_pixel == 0.5 and entry.head == "distance"


def test_the_built_wheel_contains_the_weights_their_checksum_and_the_config(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("nucleiseg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        registry = json.loads(archive.read("nucleiseg/models/pretrained/registry.json"))
        entry = registry["models"][registry["default"]]
        weights = archive.read(f"nucleiseg/models/pretrained/{entry['file']}")
    assert hashlib.sha256(weights).hexdigest() == entry["sha256"] and len(weights) == entry["size_bytes"]
    assert {"nucleiseg/conf/config.yaml", "nucleiseg/conf/experiment/release_cpu.yaml"} <= names
    assert {"nucleiseg/models/pretrained/LICENSE", f"nucleiseg/models/pretrained/{entry['card']}"} <= names


def test_predict_without_a_model_uses_the_default_one_and_says_so(tmp_path, capsys):
    from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile

    image, _ = synthetic_tile(SyntheticSpec(256, 256, n_nuclei=25), 3)
    Image.fromarray(image).save(tmp_path / "tile.png")
    code = cli(["predict", str(tmp_path / "tile.png"), "--out", str(tmp_path / "out"), "--mpp", "0.25", "--quiet"])
    said = [line for line in capsys.readouterr().err.splitlines() if "no --model given: using" in line]
    assert code == 0 and len(said) == 1 and "(default model)" in said[0]  # one line, naming the model
    done = json.loads((tmp_path / "out" / "tile" / "done.json").read_text())
    assert done["n_nuclei"] > 5 and done["settings"]["checkpoint"].endswith("(default model)")


@requires_shared_data("tnbc", "Slide_01")
@pytest.mark.realdata
def test_the_default_model_finds_the_nuclei_of_a_real_tnbc_tile(tmp_path):
    """A TNBC image (40x) with no checkpoint argument: the nuclei match the annotation."""
    from nucleiseg.data.image_io import read_mask
    from nucleiseg.metrics.instance import InstanceMetrics
    from nucleiseg.predict.api import segment

    image_path = SHARED_DATA / "tnbc" / "Slide_03" / "03_1.png"
    truth = read_mask(SHARED_DATA / "tnbc" / "GT_03" / "03_1.png")
    assert cli(["predict", str(image_path), "--out", str(tmp_path / "out"), "--mpp", "0.25", "--quiet"]) == 0
    labels, table = segment(image_path, mpp=0.25)
    metrics = InstanceMetrics()
    metrics.update(truth, labels)
    scores = metrics.compute()
    assert scores["aji"] > 0.45 and 0.7 < labels.max() / truth.max() < 1.3, (scores, labels.max(), truth.max())
    # postprocess.min_area (10 px at the model's 0.5 um/px: 2.5 um^2) holds at the input's scale too
    assert len(table) == labels.max() and (table.area_um2 >= 2.0).all()


def test_import_and_help_do_not_load_the_model_or_torch():
    code = (
        "import sys, nucleiseg, nucleiseg.cli; print(sorted(m for m in ('torch', 'safetensors') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
    helped = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from nucleiseg.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.stdout.strip().endswith("False")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_exported_default_model_reproduces_our_probabilities(tmp_path, fmt, capsys):
    out = tmp_path / f"nuclei.{'pt' if fmt == 'torchscript' else 'onnx'}"
    assert cli(["export", "--model", "default", "--format", fmt, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_probability_difference"] < 1e-4 and report["channels"] == 2
    from nucleiseg.inference.checkpoint import load_checkpoint

    model, _ = load_checkpoint(zoo.resolve("default")[0])
    images = torch.rand(1, 3, 160, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = torch.sigmoid(model(images)).numpy()
    if fmt == "torchscript":
        with torch.no_grad():
            theirs = torch.jit.load(str(out))(images).numpy()
    else:
        import onnxruntime

        theirs = onnxruntime.InferenceSession(str(out)).run(None, {"image": images.numpy()})[0]
    assert np.abs(theirs - ours).max() < 1e-4
    assert cli(["export", "--model", "default", "--format", fmt, "--out", str(out)]) == 2  # never overwrites
