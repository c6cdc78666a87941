"""``nucleiseg benchmark --suite gpu`` end to end at tiny sizes (slow: a packed sweep trains two runs)."""

import pandas as pd
import pytest
import torch

from nucleiseg.cli import main as cli


@pytest.mark.slow
def test_the_gpu_suite_measures_every_part_and_projects_the_study(trained_run, tmp_path):
    device = "gpu" if torch.cuda.is_available() else "cpu"
    arguments = ["benchmark", "--suite", "gpu", "--device", device, "--image-size", "64", "--configs", "unet_bn"]
    arguments += ["--sweep-epochs", "1", "--slide-size", "2000", "--iterations", "2", "--train-steps", "2"]
    arguments += ["--warmup", "1", "--no-mlflow", "--model", str(trained_run[3]), "--out", str(tmp_path)]
    assert cli(arguments) == 0
    rows = pd.read_csv(tmp_path / "suite.csv")
    assert list(dict.fromkeys(rows["part"])) == ["inference", "training", "sweep", "slide"]
    assert (rows["value"] > 0).all()
    projected = rows[rows["measure"].str.startswith("projected")].iloc[0]
    assert "20 runs x 20 epochs" in projected["measure"]  # one architecture: 2 variants x 10 seeds
    assert "nucleiseg benchmark --suite gpu on" in (tmp_path / "suite.md").read_text()
