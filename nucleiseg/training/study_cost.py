"""What a study will cost before it runs: ``python train.py -m experiment=paper dry_run=true``.

Each run of the sweep is planned, not trained: its configuration's training step is measured on this machine
(a few steps on synthetic batches of the configured size, once per configuration: the seeds of one configuration
share it), and the run's wall time and disk are projected from the protocol's numbers (pairs per epoch from the
prepared dataset when it exists, else the paper's 150 + 15; epochs; the test split). The rows go to
``OUTPUT_ROOT/STUDY/.projection/``; the end of the dry sweep prints them per configuration and in all, with the
launcher and the jobs it runs at once, and the end of the real sweep prints projected against actual.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nucleiseg.util.writing import write_json_atomic

PROJECTION = ".projection"
PAPER_PAIRS = {"train": 150, "val": 15, "test": 25}  # the paper protocol's split (README: Validation)
RUN_OVERHEAD_S = 15.0  # start-up, data loading, MLflow, checkpoint: measured ~10-20 s per run on CPU and GPU


def projection_folder(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_root).expanduser().resolve() / cfg.study / PROJECTION


def _pairs(cfg: DictConfig) -> tuple[dict[str, int], str]:
    from nucleiseg.data.prepare import load_manifest, prepared_path

    try:
        return dict(load_manifest(prepared_path(cfg.data))["counts"]), "prepared dataset"
    except (FileNotFoundError, KeyError, ValueError):
        return dict(PAPER_PAIRS), "the paper's split (dataset not prepared yet)"


def _step_rate(cfg: DictConfig, steps: int, warmup: int) -> tuple[float, int, str]:
    """Training images/s of ``cfg``'s configuration here, its parameter count, and the device."""
    import torch

    from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile
    from nucleiseg.training.step_timing import random_init_module, training_step_rate
    from nucleiseg.util.devices import device_name, resolve_device, resolve_flag, resolve_precision

    accelerator = cfg.trainer.accelerator
    device = resolve_device("gpu" if accelerator in ("gpu", "cuda") else "cpu" if accelerator == "cpu" else "auto")
    precision = resolve_precision(cfg.trainer.precision, device)
    module = random_init_module(
        cfg, cfg.encoder, device, resolve_flag(cfg.model.channels_last, device, "model.channels_last")
    )
    size, batch = int(cfg.data.protocol.image_size), int(cfg.data.loader.batch_size)
    image, mask = synthetic_tile(SyntheticSpec(size, size, n_nuclei=max(4, size // 12)), 0)
    images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).repeat(batch, 1, 1, 1).to(device)
    batch_data = {"image": images, "mask": torch.from_numpy(mask)[None].repeat(batch, 1, 1).to(device)}
    if cfg.model.head == "distance":
        batch_data["distance"] = torch.zeros(batch, size, size, device=device)
    rate = training_step_rate(module, lambda _: batch_data, device, precision, steps, warmup)
    return rate, sum(p.numel() for p in module.parameters()), device_name(accelerator)


def plan_run(cfg: DictConfig, name: str, steps: int = 2, warmup: int = 1) -> dict[str, Any]:
    """Measure (or reuse the measurement of) this run's configuration and project its time and disk."""
    from nucleiseg.training.identity import configuration_hash

    folder = projection_folder(cfg)
    key = configuration_hash(cfg)[:16]
    cached = folder / "configurations" / f"{key}.json"
    if cached.is_file():
        measured = json.loads(cached.read_text())
    else:
        rate, parameters, device = _step_rate(cfg, steps, warmup)
        measured = {"images_per_second": rate, "parameters": parameters, "device": device, "measured": time.time()}
        write_json_atomic(cached, measured)
    pairs, source = _pairs(cfg)
    rate = measured["images_per_second"]
    epochs = int(cfg.trainer.max_epochs)
    # validation and test cost a forward pass: about a third of a training step
    seconds = epochs * (pairs["train"] + pairs["val"] / 3) / rate + pairs["test"] / (3 * rate) + RUN_OVERHEAD_S
    disk = measured["parameters"] * 4 + 2_000_000  # weights-only model.ckpt, its card, overlays
    row = {
        "run": name,
        "configuration": cfg.encoder + ("-imagenet" if cfg.pretrained else "-scratch"),
        "seconds": seconds,
        "disk_bytes": disk,
        "images_per_second": rate,
        "device": measured["device"],
        "pairs": pairs,
        "pairs_from": source,
    }
    write_json_atomic(folder / "runs" / f"{name}.json", row)
    return row


def parallel_jobs(launcher: dict[str, Any]) -> tuple[str, int]:
    """The launcher's name and how many jobs it runs at once."""
    target = str(launcher.get("_target_", "basic"))
    if "joblib" in target.lower():
        jobs = launcher.get("n_jobs", 1)
        return "local_parallel", int(jobs) if isinstance(jobs, int) and jobs > 0 else 1
    if "submitit" in target.lower():
        slurm = "slurm" in target.lower() and "local" not in target.lower()
        return ("slurm" if slurm else "slurm_local"), int(launcher.get("array_parallelism") or 1) if slurm else 1
    return "basic (one run at a time)", 1


def summarise(cfg: DictConfig, launcher: dict[str, Any], runs: list[str]) -> str:
    """The projection of ``runs``: per configuration and in all, at the launcher's parallelism."""
    import pandas as pd

    folder = projection_folder(cfg) / "runs"
    rows = [json.loads((folder / f"{name}.json").read_text()) for name in runs if (folder / f"{name}.json").is_file()]
    if not rows:
        return "no projection (runs were not planned with dry_run=true)"
    frame = pd.DataFrame(rows)
    name, jobs = parallel_jobs(launcher)
    per = frame.groupby("configuration").agg(
        runs=("run", "count"),
        minutes=("seconds", lambda s: s.sum() / 60),
        gib=("disk_bytes", lambda s: s.sum() / 2**30),
    )
    lines = [f"projected on {rows[0]['device']} ({rows[0]['pairs_from']}):", per.round(2).to_string()]
    total = frame.seconds.sum()
    lines.append(
        f"in all: {len(frame)} runs, {total / 3600:.2f} h of training, {total / jobs / 3600:.2f} h wall time with "
        f"{name} ({jobs} at once), {frame.disk_bytes.sum() / 2**30:.2f} GiB of run folders"
    )
    return "\n".join(lines)


def projected_vs_actual(cfg: DictConfig, launcher: dict[str, Any], runs: list[str], wall_seconds: float) -> str | None:
    """After a real sweep: its projection (from an earlier dry run of the same runs) against what it took."""
    folder = projection_folder(cfg) / "runs"
    planned = [json.loads((folder / f"{n}.json").read_text()) for n in runs if (folder / f"{n}.json").is_file()]
    if not planned:
        return None
    _, jobs = parallel_jobs(launcher)
    projected = sum(row["seconds"] for row in planned) / jobs
    return (
        f"projected {projected / 60:.1f} min wall time for the {len(planned)} planned runs (dry_run=true), actual "
        f"{wall_seconds / 60:.1f} min ({wall_seconds / projected:.2f}x the projection)"
    )
