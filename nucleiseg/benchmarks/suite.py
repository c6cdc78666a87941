"""``nucleiseg benchmark --suite gpu``: what one accelerator gives this project, in one command and one table.

Four measurements, each on the code users run, not on a copy of it:

1. inference images/s of the modified U-Net: the session's fast path and the same network compiled
   (``torch.compile``), with the eager fp32 batch-1 rate beside them;
2. the training loop against its raw step (:func:`nucleiseg.benchmarks.configurations.benchmark`: the
   LightningModule's step on cached batches, then ``train.py``'s own Trainer, DataModule, validation, checkpoints
   and MLflow);
3. a packed sweep: ``train.py -m`` over the architectures of Table I, one seed, a few epochs, on synthetic data of
   the paper's sizes, through ``hydra/launcher=local_parallel`` (several runs per GPU), timed from launch to the
   last run's ``done.json``; from it, the projected wall time of the paper's 140 runs (20 epochs, 10 seeds, the
   ImageNet and random-init rows of an architecture costing the same);
4. a whole slide (default 40,000 px, 5% tissue) through ``nucleiseg predict`` with the default model: seconds,
   megapixels/s, nuclei/s, peak memory.

The sweep trains every architecture from random initialisation: the ImageNet rows differ from them only in their
starting weights (same cost per step), and a machine without internet cannot download those weights. With no GPU
(``--device cpu``) it runs at whatever sizes are given, to show the command works, and says so in its title.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from nucleiseg.benchmarks.configurations import LOOP_DATA, Measurement, Options, benchmark
from nucleiseg.inference.speed import measure_inference
from nucleiseg.models.factory import ENCODERS, create_model
from nucleiseg.util.devices import device_name, resolve_inference_precision
from nucleiseg.util.errors import ConfigError

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train.py"  # the clone's Hydra entry point
PAPER = {"epochs": 20, "seeds": 10, "variants": 2}  # the study: 20 epochs, 10 seeds, ImageNet + random init


@dataclass(frozen=True)
class SuiteOptions:
    measure: Options  # the inference / step / loop measurement of the modified U-Net (encoders: its one)
    sweep: list[str]  # architectures of the packed sweep
    sweep_epochs: int
    slide_size: int  # 0: no slide
    slide_tissue: float
    model: str | None  # the slide's model (None: the default one)


def _row(part: str, measure: str, value: float, unit: str, note: str = "") -> dict:
    return {"part": part, "measure": measure, "value": value, "unit": unit, "note": note}


def _inference_rows(cfg: DictConfig, options: Options, measured: Measurement) -> list[dict]:
    """The fast path from the benchmark, and the same network compiled (timed after its warm-up compiles it)."""
    device, size = options.device, options.image_size
    precision = resolve_inference_precision(cfg.predict.precision, device)
    widths = OmegaConf.to_container(cfg.model.unet_widths) if cfg.model.unet_widths else None
    model = create_model("unet_bn", head=cfg.model.head, unet_widths=widths, n_rays=cfg.model.n_rays).to(device).eval()
    channels_last = device.type == "cuda"
    compiled = torch.compile(model.to(memory_format=torch.channels_last) if channels_last else model)
    fast = measure_inference(
        compiled,
        size,
        options.infer_batch,
        precision,
        device,
        max(options.warmup, 2),
        options.iterations,
        channels_last,
    )
    setting = f"{size}px, batch {options.infer_batch}, {precision}"
    return [
        _row("inference", "eager fp32, batch 1", measured.infer_naive, "img/s", f"{size}px"),
        _row("inference", "fast path (the session's)", measured.infer_fast, "img/s", setting),
        _row("inference", "fast path, torch.compile", fast["images_per_second"], "img/s", setting),
    ]


def _training_rows(measured: Measurement) -> list[dict]:
    note = f"batch {measured.train_batch}, {measured.train_precision}"
    return [
        _row("training", "raw step (module + optimiser, cached batches)", measured.train_step, "img/s", note),
        _row("training", "train.py loop (after its first epoch)", measured.loop, "img/s", note),
        _row("training", "loop / step", measured.loop_ratio, "ratio"),
    ]


def _sweep_command(cfg: DictConfig, options: SuiteOptions, folder: Path) -> list[str]:
    size, device = options.measure.image_size, options.measure.device
    return [
        sys.executable,
        str(TRAIN_SCRIPT),
        "-m",
        f"encoder={','.join(options.sweep)}",
        "pretrained=false",
        "seed=0",
        "hydra/launcher=local_parallel",
        *LOOP_DATA,
        f"data.sources.synthetic.tile_size={size}",
        f"data.protocol.image_size={size}",
        f"trainer.max_epochs={options.sweep_epochs}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"paths.root_dir={folder}",
        f"logger.tracking_uri=sqlite:///{folder / 'mlflow.db'}",
        "study=benchmark-suite",
        "progress_bar=none",
        "tune.enabled=false",
        "speed.enabled=false",
        "logger.overlays=0",
        f"model.head={cfg.model.head}",
    ]


def _sweep_rows(cfg: DictConfig, options: SuiteOptions, folder: Path, log: Callable[[str], object]) -> list[dict]:
    """Launch the packed sweep, time it, and project the 140-run study from each run's own training time."""
    from nucleiseg.util.parallel import parallel_jobs

    if not TRAIN_SCRIPT.is_file():
        raise ConfigError(f"the packed sweep runs {TRAIN_SCRIPT}, which is not there: run the suite from a clone")
    log(f"packed sweep: {len(options.sweep)} architectures x {options.sweep_epochs} epoch(s)...")
    started = time.perf_counter()
    # its runs go to the scratch store its command names: a MLFLOW_TRACKING_URI of the user's would win over it
    scratch_env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        _sweep_command(cfg, options, folder), capture_output=True, text=True, cwd=folder, env=scratch_env
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the packed sweep failed (exit {done.returncode}): {done.stderr[-1500:]}")
    records = [json.loads(p.read_text()) for p in folder.glob("outputs/benchmark-suite/*/done.json")]
    if len(records) != len(options.sweep):
        raise RuntimeError(
            f"the packed sweep finished {len(records)} of {len(options.sweep)} runs: {done.stderr[-800:]}"
        )
    jobs = max(1, min(parallel_jobs(), len(records)))
    train = [float(r["metrics"]["train_seconds"]) for r in records]
    overhead = max(0.0, wall * jobs / len(records) - sum(train) / len(records))  # start-up, data, test, logging
    per_run = [t * PAPER["epochs"] / options.sweep_epochs + overhead for t in train]
    projected = PAPER["variants"] * PAPER["seeds"] * sum(per_run) / jobs
    runs = PAPER["variants"] * PAPER["seeds"] * len(records)
    return [
        _row("sweep", f"{len(records)} runs x {options.sweep_epochs} epoch(s), {jobs} at once", wall, "s"),
        _row("sweep", "start-up and test per run (outside training)", overhead, "s"),
        _row("sweep", f"projected: {runs} runs x {PAPER['epochs']} epochs", projected / 3600, "h", f"{jobs} at once"),
    ]


def _slide_rows(options: SuiteOptions, folder: Path, log: Callable[[str], object]) -> list[dict]:
    from nucleiseg.benchmarks.slide import measure, synthetic_slide

    size = options.slide_size
    log(f"writing a {size} x {size} slide ({options.slide_tissue:.0%} tissue)...")
    slide = synthetic_slide(folder / f"synthetic-{size}.tif", size, options.slide_tissue)
    result = measure(slide, options.model, folder / "predicted", [])
    slide.unlink()
    note = f"{size} px, {options.slide_tissue:.0%} tissue, {result['windows_with_tissue']} windows"
    return [
        _row("slide", "nucleiseg predict", result["seconds"], "s", note),
        _row("slide", "tissue megapixels per second", result["tissue_megapixels_per_second"], "Mpx/s"),
        _row("slide", "nuclei per second", result["nuclei_per_second"], "nuclei/s", f"{result['nuclei']} nuclei"),
        _row("slide", "peak memory of predict", result["peak_rss_mb"], "MB"),
    ]


def run_suite(cfg: DictConfig, options: SuiteOptions, log: Callable[[str], object] = print) -> list[dict]:
    """Every measurement of the suite, as rows ``{part, measure, value, unit, note}``."""
    unknown = sorted(set(options.sweep) - set(ENCODERS))
    if unknown:
        raise ConfigError(f"--configs {','.join(unknown)}: not an architecture; expected some of {', '.join(ENCODERS)}")
    measure = replace(options.measure, encoders=["unet_bn"], loop_epochs=max(options.measure.loop_epochs, 2))
    [measured, *_] = benchmark(cfg, measure, log=log)
    rows = _inference_rows(cfg, measure, measured) + _training_rows(measured)
    with tempfile.TemporaryDirectory(prefix="nucleiseg-suite-") as scratch:
        if options.sweep:
            (Path(scratch) / "sweep").mkdir()
            rows += _sweep_rows(cfg, options, Path(scratch) / "sweep", log)
        if options.slide_size:
            rows += _slide_rows(options, Path(scratch), log)
    return rows


def suite_markdown(rows: list[dict], device: torch.device) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"nucleiseg benchmark --suite gpu on {device_name(device)}, {when}"
    if device.type != "cuda":
        title += " (no GPU: run on the CPU at small sizes to show the command works; not a GPU measurement)"
    lines = [title, "", "| part | measure | value | unit | note |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['part']} | {row['measure']} | {row['value']:.3g} | {row['unit']} | {row['note']} |")
    return "\n".join(lines) + "\n"
