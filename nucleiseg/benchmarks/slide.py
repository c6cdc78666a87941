"""``nucleiseg benchmark-slide``: whole-slide throughput and peak memory, measured on the real command.

Writes a synthetic pyramidal slide of the sizes asked (a centred square of synthetic H&E covering the tissue
fraction, glass elsewhere), or takes the user's slide, and runs ``nucleiseg predict`` on it in a child process:
wall time, tissue megapixels per second (at the model's resolution), nuclei per second and the child's peak
resident memory. Several sizes with the same tissue area show whether memory grows with the slide (it should not).

``--baseline "KEY=VALUE ..."`` also runs every slide with those settings first (e.g. the old path:
``slide.workers=1 predict.backend=torch``), in the same invocation on the same files, and prints each setting's
time as a ratio of the baseline's, with the two runs' nucleus counts and the largest distance from a nucleus of
one run to the nearest of the other (the outputs must agree, not only the clocks).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nucleiseg.data.synthetic_slide import synthetic_pool, tissue_content, write_slide


def _cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def synthetic_slide(path: Path, size: int, tissue: float, mpp: float = 0.25) -> Path:
    """A ``size`` x ``size`` slide, ``tissue`` of it H&E (a centred square), at ``mpp``, JPEG tiles."""
    side = int(size * math.sqrt(tissue))
    start = (size - side) // 2
    content = tissue_content(synthetic_pool(256, 8), [(start, start, start + side, start + side)])
    return write_slide(path, size, size, content, mpp=mpp, compression="jpeg")


def measure(slide: Path, model: str | None, out: Path, extra: list[str]) -> dict:
    """Run ``nucleiseg predict`` on ``slide`` in a child process; its time, throughput and peak memory (that
    child's own maximum resident set, from ``wait4``)."""
    command = [sys.executable, "-m", "nucleiseg.cli", "predict", str(slide), "--out", str(out)]
    command += [*(["--model", model] if model else []), "--quiet", *extra]
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"predict failed on {slide}: {errors.read().decode()[-1500:]}")
    peak = usage.ru_maxrss  # kilobytes on Linux
    info = json.loads((out / slide.stem / "slide.json").read_text())
    return {
        "slide": slide.name,
        "width": info["dimensions"][0],
        "height": info["dimensions"][1],
        "tissue_fraction": info["tissue_fraction"],
        "windows": info["windows"],
        "windows_with_tissue": info["windows_with_tissue"],
        "seconds": seconds,
        "tissue_megapixels": info["tissue_megapixels"],
        "tissue_megapixels_per_second": info["tissue_megapixels"] / seconds,
        "nuclei": info["n_nuclei"],
        "nuclei_per_second": info["n_nuclei"] / seconds,
        "peak_rss_mb": peak / 1024,
    }


def _centroids(folder: Path) -> list[tuple[float, float]]:
    """The nucleus centroids of one predict output (``features.csv``), in slide pixels."""
    import pandas as pd

    table = pd.read_csv(folder / "features.csv")
    return list(zip(table["centroid_x"], table["centroid_y"], strict=True))


def _agreement(baseline: Path, new: Path) -> float:
    """Largest distance (slide pixels) from a nucleus centroid of either run to the nearest one of the other run:
    0 when both found the same nuclei; large when a nucleus is missing on one side."""
    from scipy.spatial import cKDTree

    ours, theirs = _centroids(baseline), _centroids(new)
    if not ours or not theirs:
        return 0.0 if len(ours) == len(theirs) else math.inf
    return float(max(cKDTree(theirs).query(ours)[0].max(), cKDTree(ours).query(theirs)[0].max()))


def _measure_slides(args: argparse.Namespace, slides: list[Path], scratch: Path) -> list[dict]:
    settings = [("baseline", args.baseline.split()), ("measured", args.words)] if args.baseline else [("", args.words)]
    rows = []
    for slide in slides:
        outputs = {}
        for label, words in settings:
            outputs[label] = scratch / f"out-{slide.stem}-{label or 'run'}"
            row = {"run": label or "measured", "settings": " ".join(words) or "(defaults)"}
            row.update(measure(slide, args.model, outputs[label], words))
            rows.append(row)
            print(
                f"{slide.name} {row['settings']}: {row['seconds']:.0f} s, peak {row['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
            )
        if args.baseline:
            base, new = rows[-2], rows[-1]
            new["speed_vs_baseline"] = base["seconds"] / new["seconds"]
            new["max_centroid_shift_px"] = _agreement(
                outputs["baseline"] / slide.stem, outputs["measured"] / slide.stem
            )
    return rows


def run_slide_benchmark(args: argparse.Namespace) -> int:
    import pandas as pd
    from rich.table import Table

    from nucleiseg.util.console import make_console

    with tempfile.TemporaryDirectory(prefix="nucleiseg-slide-bench-") as scratch:
        scratch = Path(scratch)
        slides = [Path(s) for s in args.slide] if args.slide else []
        for size in [] if args.slide else [int(s) for s in args.sizes.split(",")]:
            print(f"writing a {size} x {size} slide ({args.tissue:.0%} tissue)...", file=sys.stderr)
            slides.append(synthetic_slide(scratch / f"synthetic-{size}.tif", size, args.tissue))
        rows = _measure_slides(args, slides, scratch)
    table = Table()
    columns = [
        "slide",
        *(["settings"] if args.baseline else []),
        "width",
        "height",
        "tissue_fraction",
        "windows_with_tissue",
        "seconds",
        "tissue_megapixels_per_second",
        "nuclei",
        "nuclei_per_second",
        "peak_rss_mb",
        *(["speed_vs_baseline", "max_centroid_shift_px"] if args.baseline else []),
    ]
    for column in columns:
        table.add_column(column.replace("_", " "), justify="left" if column == "slide" else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(c, "")) for c in columns))
    console = make_console()
    console.print("nucleiseg benchmark-slide")
    console.print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(out / "benchmark_slide.csv", index=False)
        print(f"written: {out / 'benchmark_slide.csv'}")
    return 0
