"""``nucleiseg benchmark-slide --baseline``: two settings on the same slide, in one invocation, as ratios."""

import pandas as pd

from nucleiseg.cli import main as cli


def test_a_baseline_run_gives_a_ratio_and_the_outputs_agreement(trained_run, tmp_path, capsys):
    code = cli(
        [
            "benchmark-slide",
            "--sizes",
            "1200",
            "--tissue",
            "0.5",
            "--model",
            str(trained_run[3]),
            "--baseline",
            "slide.window=256 slide.workers=1",
            "slide.window=256",
            "slide.workers=2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    rows = pd.read_csv(tmp_path / "benchmark_slide.csv")
    assert list(rows["run"]) == ["baseline", "measured"]
    assert list(rows["settings"]) == ["slide.window=256 slide.workers=1", "slide.window=256 slide.workers=2"]
    measured = rows.iloc[1]
    assert measured["speed_vs_baseline"] == rows.iloc[0]["seconds"] / measured["seconds"]
    assert rows.iloc[0]["nuclei"] == measured["nuclei"] > 0
    assert measured["max_centroid_shift_px"] == 0.0  # two workers find the same nuclei as one, at the same places
    assert "speed vs baseline" in capsys.readouterr().out
