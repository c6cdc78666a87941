"""slide.workers=auto: the windows in flight are sized from what the first window costs, the memory budget, the
machine's free memory and its cores; the outputs are those of one window at a time."""

import json

import numpy as np
import pytest

import nucleiseg.predict.slides.workers as workers_module
from nucleiseg.config.settings import defaults
from nucleiseg.data.synthetic_slide import discs_content, write_slide
from nucleiseg.predict.slides.workers import GB, WindowFootprint, choose_workers, measure_window
from tests.slides.test_slides import RADIUS, SEAM_CENTRES, WINDOWS, _run


@pytest.fixture
def machine(monkeypatch):
    def set_machine(free_gb, cores):
        monkeypatch.setattr(workers_module, "available_memory", lambda: None if free_gb is None else free_gb * GB)
        monkeypatch.setattr(workers_module, "usable_cores", lambda: cores)

    return set_machine


@pytest.mark.parametrize(
    ("window_gb", "base_gb", "free_gb", "cores", "expected"),
    [
        (1.85, 1.35, 20, 2, 1),  # a full-width U-Net: a second window would pass 3.5 GB
        (0.40, 1.30, 20, 2, 3),  # the default model: three fit, and 2 cores + 1
        (0.40, 1.30, 20, 1, 2),  # one core: at most two windows
        (0.40, 1.30, 1.0, 16, 2),  # little free memory: 80% of 1 GB holds two windows
        (0.05, 0.50, 64, 32, 3),  # never more than slide.max_workers
        (4.00, 1.00, 64, 8, 1),  # one window beyond the budget: still one (never zero)
    ],
)
def test_windows_in_flight_follow_memory_and_cores(machine, window_gb, base_gb, free_gb, cores, expected):
    machine(free_gb, cores)
    footprint = WindowFootprint(int(window_gb * GB), int(base_gb * GB))
    workers, why = choose_workers(footprint, memory_gb=3.5, max_workers=3)
    assert workers == expected
    assert f"{window_gb:.2f} GB" in why and f"{cores} cores" in why


def test_the_first_windows_memory_is_measured_while_it_runs():
    def allocate():
        block = np.ones(300 * 2**20 // 8)  # 300 MB held for a moment, then freed
        return float(block[0])

    result, footprint = measure_window(allocate)
    assert result == 1.0
    assert 250 * 2**20 < footprint.window_bytes < 600 * 2**20 and footprint.base_bytes > 0


@pytest.fixture(scope="module")
def seams_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("workers") / "seams.tif"
    return write_slide(path, 1600, 1400, discs_content(SEAM_CENTRES, RADIUS), mpp=0.25, tile=128, min_side=256)


def test_auto_writes_what_one_window_at_a_time_writes(seams_slide, tmp_path):
    auto = defaults("slide", **{**WINDOWS.__dict__, "workers": "auto"})
    one = defaults("slide", **{**WINDOWS.__dict__, "workers": 1})
    assert (
        _run(seams_slide, tmp_path / "auto", settings=auto).ok and _run(seams_slide, tmp_path / "one", settings=one).ok
    )
    first, second = (json.loads((tmp_path / name / "seams" / "slide.json").read_text()) for name in ("auto", "one"))
    assert first["windows_in_flight"] >= 1 and second["windows_in_flight"] == 1
    for name in ("features.csv",):
        assert (tmp_path / "auto" / "seams" / name).read_text() == (tmp_path / "one" / "seams" / name).read_text()
