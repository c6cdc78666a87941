"""``nucleiseg predict``: nuclei in a user's own images, ready to count, measure and open in QuPath.

For each input image ``NAME`` the folder ``OUT/NAME/`` receives ``probability.tif``, ``mask.png``,
``instances.tif``, ``overlay.png``, ``nuclei.geojson``, ``features.csv`` (+ ``.parquet`` with pyarrow) and,
last, ``done.json``. Each file is written under a temporary name and renamed. Re-running the command skips
images with a ``done.json`` (resume); a folder marked ``.in_progress`` by an interrupted run is completed.
Outputs found without either marker are someone else's and are left alone unless ``--overwrite``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from nucleiseg.data.image_io import read_rgb
from nucleiseg.data.stain import from_state
from nucleiseg.devices import cuda_available, resolve_flag, resolve_inference_precision
from nucleiseg.errors import ConfigError, NucleisegError
from nucleiseg.inference.checkpoint import load_checkpoint
from nucleiseg.inference.export import (
    geojson_bytes,
    geojson_nuclei,
    outline_overlay,
    png_bytes,
    tiff_bytes,
)
from nucleiseg.inference.tiling import Segmenter
from nucleiseg.postprocess.features import nucleus_features, write_features
from nucleiseg.postprocess.instances import separate_with_config
from nucleiseg.tracking.mlflow_store import tracking_uri
from nucleiseg.writing import write_bytes_atomic, write_json_atomic

INPUT_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
OUTPUTS = ("probability.tif", "mask.png", "instances.tif", "overlay.png", "nuclei.geojson", "features.csv")
DONE, IN_PROGRESS = "done.json", ".in_progress"


@dataclass
class PredictSummary:
    done: list[tuple[str, int]] = field(default_factory=list)  # (image, nuclei)
    skipped: list[str] = field(default_factory=list)  # finished by an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    not_written: list[str] = field(default_factory=list)  # outputs exist, no --overwrite

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_written


def expand_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named or inside named folders (not recursive); missing paths are returned as failures."""
    files, missing = [], []
    for entry in map(Path, inputs):
        if entry.is_dir():
            files += sorted(p for p in entry.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and p.is_file())
        elif entry.is_file():
            files.append(entry)
        else:
            missing.append((str(entry), "no such file or folder"))
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems and stems[path.stem] != path:
            raise ConfigError(
                f"two inputs share the name {path.stem!r} ({stems[path.stem]} and {path}); their "
                "outputs would collide in OUT/NAME/: rename one or predict them separately"
            )
        stems[path.stem] = path
    return list(dict.fromkeys(files)), missing


def resolve_checkpoint(checkpoint: str | None, run_id: str | None, store_uri: str) -> Path:
    """A checkpoint path, given directly or through the ``checkpoint`` tag of an MLflow training run."""
    if bool(checkpoint) == bool(run_id):
        raise ConfigError("give exactly one of --checkpoint PATH or --run-id MLFLOW_RUN_ID")
    if checkpoint:
        return Path(checkpoint).expanduser()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        tags = MlflowClient(store_uri).get_run(run_id).data.tags
    except MlflowException as error:
        raise ConfigError(f"--run-id {run_id}: no such MLflow run at {store_uri} ({error.message[:120]})") from None
    if "checkpoint" not in tags:
        raise ConfigError(f"--run-id {run_id}: the run has no 'checkpoint' tag (did it finish?)")
    return Path(tags["checkpoint"])


def _state(folder: Path) -> str:
    if (folder / DONE).is_file():
        return "done"
    if (folder / IN_PROGRESS).exists():
        return "interrupted"
    if folder.is_dir() and any((folder / name).exists() for name in OUTPUTS):
        return "foreign"
    return "new"


def predict_image(
    segmenter: Segmenter,
    image: np.ndarray,
    name: str,
    folder: Path,
    threshold: float,
    postprocess: Mapping,
    microns_per_pixel: float | None,
    progress=None,
) -> int:
    """Write every output of one image into ``folder``; return the number of nuclei found."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / IN_PROGRESS).touch()
    started = time.perf_counter()
    probability = segmenter.probability(image, progress=progress)
    instances = separate_with_config(probability, threshold, postprocess)
    features = nucleus_features(image, instances, name, microns_per_pixel)
    write_bytes_atomic(folder / "probability.tif", tiff_bytes(probability.astype(np.float32)))
    write_bytes_atomic(folder / "mask.png", png_bytes(((probability >= threshold) * 255).astype(np.uint8)))
    write_bytes_atomic(folder / "instances.tif", tiff_bytes(instances.astype(np.int32)))
    write_bytes_atomic(folder / "overlay.png", png_bytes(outline_overlay(image, instances)))
    write_bytes_atomic(folder / "nuclei.geojson", geojson_bytes(geojson_nuclei(instances, features)))
    written = write_features(features, folder / "features.csv")
    n_nuclei = int(instances.max())
    write_json_atomic(
        folder / DONE,
        {
            "image": name,
            "n_nuclei": n_nuclei,
            "height": image.shape[0],
            "width": image.shape[1],
            "seconds": time.perf_counter() - started,
            "outputs": list(OUTPUTS) + [p.name for p in written[1:]],
        },
    )
    (folder / IN_PROGRESS).unlink(missing_ok=True)
    return n_nuclei


def predict(
    inputs: list[str | Path],
    out: str | Path,
    cfg: DictConfig,
    checkpoint: str | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> PredictSummary:
    """Predict every input image into ``out``; never raises for one bad image (it is listed in the summary)."""
    model, hparams = load_checkpoint(resolve_checkpoint(checkpoint, run_id, tracking_uri(cfg.logger)))
    files, missing = expand_inputs(inputs)
    summary = PredictSummary(failed=list(missing))
    if not files and not missing:
        raise ConfigError(f"no image ({', '.join(sorted(INPUT_SUFFIXES))}) found in {[str(i) for i in inputs]}")
    accelerator = cfg.trainer.accelerator
    segmenter = Segmenter(
        model,
        "cuda" if cuda_available(accelerator) else "cpu",
        resolve_inference_precision(cfg.predict.precision, accelerator),
        tile_size=cfg.predict.tile_size,
        overlap=cfg.predict.overlap,
        tta=cfg.predict.tta,
        batch_size=cfg.predict.batch_size,
        normaliser=from_state(hparams.get("stain")),
        channels_last=resolve_flag(cfg.model.channels_last, accelerator, "model.channels_last"),
        scale=cfg.predict.scale,
    )
    if cfg.predict.compile:
        segmenter.model.compile()
    threshold = float(hparams.get("threshold", cfg.threshold))
    out = Path(out).expanduser()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        images_task = progress.add_task("images", total=len(files))
        for path in files:
            folder = out / path.stem
            state = _state(folder)
            if state == "done" and not overwrite:
                summary.skipped.append(path.name)
            elif state == "foreign" and not overwrite:
                summary.not_written.append(path.name)
            else:
                try:
                    image = read_rgb(path)
                    tiles = progress.add_task(f"  {path.name}", total=segmenter.n_tiles(*image.shape[:2]))
                    if overwrite:
                        (folder / DONE).unlink(missing_ok=True)
                    n = predict_image(
                        segmenter,
                        image,
                        path.stem,
                        folder,
                        threshold,
                        cfg.postprocess,
                        cfg.predict.microns_per_pixel,
                        lambda k, t=tiles: progress.advance(t, k),
                    )
                    progress.remove_task(tiles)
                    summary.done.append((path.name, n))
                except (NucleisegError, OSError, MemoryError) as error:
                    summary.failed.append((str(path), str(error)))
            progress.advance(images_task)
    return summary


def print_summary(summary: PredictSummary, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"nucleiseg predict -> {out}")
    table.add_column("")
    table.add_column("images", justify="right")
    table.add_row("predicted", str(len(summary.done)))
    table.add_row("already done (skipped)", str(len(summary.skipped)))
    table.add_row("outputs exist, not overwritten", str(len(summary.not_written)))
    table.add_row("failed", str(len(summary.failed)))
    table.add_row("nuclei found", str(sum(n for _, n in summary.done)))
    console.print(table)
    for name in summary.not_written:
        console.print(
            f"[yellow]not written[/yellow] {name}: {out / Path(name).stem} holds outputs of unknown origin; "
            "pass --overwrite to replace them"
        )
    for name, reason in summary.failed:
        console.print(f"[red]failed[/red] {name}: {reason}")


def summary_json(summary: PredictSummary) -> dict[str, Any]:
    return {
        "done": summary.done,
        "skipped": summary.skipped,
        "failed": summary.failed,
        "not_written": summary.not_written,
        "nuclei": sum(n for _, n in summary.done),
    }


def load_done(folder: Path) -> dict[str, Any]:
    return json.loads((folder / DONE).read_text())
