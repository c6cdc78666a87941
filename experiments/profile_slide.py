"""Where a whole slide's time goes: ``nucleiseg predict`` on one slide under cProfile, grouped by stage.

    python experiments/profile_slide.py --size 20000 --tissue 0.05 [--model NAME|PATH] [KEY=VALUE ...]

Writes a synthetic pyramidal slide as ``benchmark-slide`` does (or takes ``--slide``), runs ``predict`` in this
process with ``slide.workers=1`` (cProfile sees one thread; with two workers the stages overlap and their sum
exceeds the wall time) and prints one row per stage: the cumulative seconds of the function that is that stage.
Stages nest (features include colour conversion), so the table lists them as measured, with the share of the
whole run; "other" is what no stage accounts for. Used for experiments/benchmarks.md (issue 21).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

# stage -> (module path suffix, function name): the one function whose cumulative time is that stage
STAGES = {
    "imports (first use of torch, scipy, ...)": ("<frozen importlib._bootstrap>", "_find_and_load"),
    "model loading (checksum, weights)": ("nucleiseg/inference/session.py", "from_checkpoint"),
    "input identity (SHA-256 of the slide)": ("nucleiseg/predict/input_identity.py", "input_identity"),
    "slide reading (tiffslide, JPEG decode)": ("nucleiseg/predict/slides/reader.py", "read"),
    "thumbnail + tissue mask": ("nucleiseg/predict/slides/predict_slide.py", "_tissue_windows"),
    "resampling to the model's scale": ("nucleiseg/data/transforms.py", "resize_image"),
    "network (tiles, blending)": ("nucleiseg/inference/session.py", "predict"),
    "separation into nuclei (watershed)": ("nucleiseg/inference/session.py", "instances"),
    "features (regionprops, colour deconvolution)": ("nucleiseg/postprocess/features.py", "nucleus_features"),
    "polygons (GeoJSON outlines)": ("nucleiseg/inference/export.py", "nucleus_features_geojson"),
    "journal writes": ("nucleiseg/predict/slides/predict_slide.py", "write"),
    "assembly of the outputs": ("nucleiseg/predict/slides/predict_slide.py", "assemble"),
}


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of each stage's function (summed over same-named functions of that file)."""
    seconds = dict.fromkeys(STAGES, 0.0)
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for stage, (suffix, name) in STAGES.items():
            if filename.endswith(suffix) and function == name:
                seconds[stage] += cumulative
    return seconds


def main() -> None:
    from nucleiseg.benchmarks.slide import synthetic_slide
    from nucleiseg.cli import main as cli

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("words", nargs="*", help="KEY=VALUE overrides for predict")
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--tissue", type=float, default=0.05)
    parser.add_argument("--slide", default=None)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nucleiseg-profile-") as scratch:
        slide = Path(args.slide) if args.slide else synthetic_slide(Path(scratch) / "slide.tif", args.size, args.tissue)
        command = ["predict", str(slide), "--out", str(Path(scratch) / "out"), "--quiet", "slide.workers=1"]
        command += [*(["--model", args.model] if args.model else []), *args.words]
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        code = cli(command)
        profiler.disable()
        wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"predict failed (exit {code})")
    seconds = stage_seconds(pstats.Stats(profiler))
    print(f"| stage | seconds | share of {wall:.1f} s |\n|---|---|---|")
    for stage, value in seconds.items():
        print(f"| {stage} | {value:.1f} | {value / wall:.0%} |")
    other = wall - sum(v for k, v in seconds.items() if not k.startswith("imports"))
    print(f"| other (outside the stages above, imports included) | {other:.1f} | {other / wall:.0%} |")


if __name__ == "__main__":
    main()
