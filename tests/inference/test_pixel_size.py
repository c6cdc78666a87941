"""Pixel sizes outside what a nucleus can be segmented at are refused in one line, wherever they come from (the
Python API, --mpp, --scale, a file's own tag), before anything is allocated: 1000 um/px asked for 12 TB."""

import math

import numpy as np
import pytest
from PIL import Image

import nucleiseg
from nucleiseg.cli import main as cli
from nucleiseg.data.synthetic_slide import discs_content, write_slide
from nucleiseg.inference.settings import PLAUSIBLE_MPP, check_pixel_size
from nucleiseg.util.errors import ConfigError


@pytest.mark.parametrize("mpp", [1000, math.inf, 0, 1e-5, -0.25, math.nan])
def test_the_python_api_refuses_an_implausible_pixel_size(tmp_path, mpp):
    tile = tmp_path / "tile.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tile)
    with pytest.raises(ConfigError, match=r"expected a pixel size between 0\.05 and 5\.0 micrometres per pixel"):
        nucleiseg.segment(tile, mpp=mpp)


@pytest.mark.parametrize("words", [["--mpp", "1000"], ["--mpp", "inf"], ["--mpp", "0"], ["--scale", "1e-9"]])
def test_the_command_refuses_them_in_one_line(tmp_path, capsys, words):
    tile = tmp_path / "tile.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tile)
    assert cli(["predict", str(tile), "--out", str(tmp_path / "out"), *words]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and ("pixel size between" in errors[0] or "resampling factor between" in errors[0])


def test_a_slide_whose_own_tag_is_implausible_fails_naming_it(tmp_path):
    from nucleiseg.config.settings import defaults
    from nucleiseg.predict.run import predict
    from tests.slides.test_slides import oracle_session

    slide = write_slide(tmp_path / "odd.tif", 1200, 900, discs_content([(300.0, 300.0)], 10), mpp=800.0, min_side=256)
    summary = predict([slide], tmp_path / "out", oracle_session(), progress="none", slide_settings=defaults("slide"))
    [(name, reason)] = summary.failed
    assert "odd.tif: the file gives 800.0 um/px, outside 0.05..5.0; give the right one with --mpp" in reason


def test_the_range_holds_the_common_magnifications():
    for mpp in (0.1, 0.25, 0.5, 1.0, 2.0):
        assert check_pixel_size(mpp, "x") == mpp
    assert PLAUSIBLE_MPP[0] < 0.1 and PLAUSIBLE_MPP[1] >= 2.0
