"""``nucleiseg predict``: nuclei in a user's own images, ready to count, measure and open in QuPath.

For each input image ``NAME`` the folder ``OUT/NAME/`` receives ``probability.tif``, ``mask.png``,
``instances.tif``, ``overlay.png``, ``nuclei.geojson``, ``features.csv`` (+ ``.parquet`` with pyarrow) and,
last, ``done.json``. Each file is written under a temporary name and renamed. Re-running the command skips
images whose ``done.json`` was made by the same model and settings (resume); a folder marked ``.in_progress`` by
an interrupted run is completed. Outputs of another model or other settings, or found without either marker,
are left alone unless ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucleiseg.data.image_io import IMAGE_SUFFIXES, read_rgb
from nucleiseg.errors import ConfigError, NucleisegError, first_line
from nucleiseg.inference.export import geojson_bytes, geojson_nuclei, outline_overlay
from nucleiseg.inference.session import InferenceSession
from nucleiseg.postprocess.features import nucleus_features, write_features
from nucleiseg.progress import Progress
from nucleiseg.slides.reader import SLIDE_SUFFIXES
from nucleiseg.writing import png_bytes, tiff_bytes, write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)
INPUT_SUFFIXES = tuple(dict.fromkeys(IMAGE_SUFFIXES + SLIDE_SUFFIXES))
OUTPUTS = ("probability.tif", "mask.png", "instances.tif", "overlay.png", "nuclei.geojson", "features.csv")
DONE, IN_PROGRESS = "done.json", ".in_progress"


@dataclass
class PredictSummary:
    done: list[tuple[str, int]] = field(default_factory=list)  # (image, nuclei)
    skipped: list[str] = field(default_factory=list)  # finished by an earlier run with the same model and settings
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    not_written: list[tuple[str, str]] = field(default_factory=list)  # (image, why): outputs exist, no --overwrite

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
        name = output_name(path)
        if name in stems and stems[name] != path:
            raise ConfigError(
                f"two inputs share the name {name!r} ({stems[name]} and {path}); their "
                "outputs would collide in OUT/NAME/: rename one or predict them separately"
            )
        stems[name] = path
    return list(dict.fromkeys(files)), missing


def output_name(path: Path) -> str:
    """The output folder's name of an input: its stem, never empty, ``.`` or ``..`` (a file named ``...png``
    must not write into the parent of ``--out``)."""
    stem = path.stem.strip()
    return stem if stem and set(stem) != {"."} else f"image-{hashlib.sha256(path.name.encode()).hexdigest()[:8]}"


def resolve_checkpoint(checkpoint: str | None, run_id: str | None, store_uri: str) -> Path:
    """A checkpoint path, given directly or as an MLflow run id: the run's ``checkpoint/model.ckpt`` artifact
    (downloaded from the tracking server into the local cache), or its ``checkpoint`` tag when that file is here."""
    if bool(checkpoint) == bool(run_id):
        raise ConfigError("give exactly one of --checkpoint PATH or --run-id MLFLOW_RUN_ID")
    if checkpoint:
        return Path(checkpoint).expanduser()
    from nucleiseg.tracking.artifacts import run_checkpoint

    return run_checkpoint(run_id, store_uri)


def settings_fingerprint(session: InferenceSession) -> str:
    """What made an image's outputs: the checkpoint's bytes and every setting that changes them."""
    described = session.describe()
    described.pop("device", None)
    described.pop("origins", None)
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    source = Path(session.source)
    if source.is_file():
        with source.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _state(folder: Path, fingerprint: str) -> str:
    from nucleiseg.slides.predict_slide import JOURNAL, SLIDE_OUTPUTS

    done = folder / DONE
    if done.is_file():
        try:
            made_by = json.loads(done.read_text()).get("fingerprint")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "foreign"
        return "done" if made_by == fingerprint else "other"
    if (folder / IN_PROGRESS).exists() or (folder / JOURNAL / "plan.json").is_file():
        return "interrupted"
    if folder.is_dir() and any((folder / name).exists() for name in OUTPUTS + SLIDE_OUTPUTS):
        return "foreign"
    return "new"


def predict_image(
    session: InferenceSession, image: np.ndarray, name: str, folder: Path, fingerprint: str, progress=None
) -> int:
    """Write every output of one image into ``folder``; return the number of nuclei found."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / IN_PROGRESS).touch()
    started = time.perf_counter()
    prediction = session.predict(image, session.scale_for(), progress=progress)
    instances = session.instances(prediction)
    mpp = session.settings.microns_per_pixel
    features = nucleus_features(image, instances, name, mpp)
    write_bytes_atomic(folder / "probability.tif", tiff_bytes(prediction.probability.astype(np.float32)))
    mask = ((prediction.probability >= session.threshold) * 255).astype(np.uint8)
    write_bytes_atomic(folder / "mask.png", png_bytes(mask))
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
            "fingerprint": fingerprint,
            "settings": session.describe(),
        },
    )
    (folder / IN_PROGRESS).unlink(missing_ok=True)
    return n_nuclei


def predict_slide_input(
    session: InferenceSession, path: Path, folder: Path, fingerprint: str, slide_settings, bars, overwrite: bool
) -> int:
    """A whole slide (or any image too large to handle whole) through the windowed path; returns nuclei."""
    import shutil

    from nucleiseg.slides.predict_slide import JOURNAL, SLIDE_OUTPUTS, predict_slide
    from nucleiseg.slides.reader import open_slide

    if overwrite:
        shutil.rmtree(folder / JOURNAL, ignore_errors=True)
        (folder / DONE).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    slide = open_slide(path, session.settings.microns_per_pixel)
    try:
        result = predict_slide(slide, folder, session, slide_settings, fingerprint, bars)
    finally:
        slide.close()
    write_json_atomic(folder / "slide.json", result.summary)
    outputs = list(SLIDE_OUTPUTS)
    outputs += [name for name in ("features.parquet", "labels.tif") if (folder / name).is_file()]
    write_json_atomic(
        folder / DONE,
        {
            "image": path.name,
            "n_nuclei": result.n_nuclei,
            "outputs": outputs,
            "fingerprint": fingerprint,
            "settings": session.describe(),
            "slide": {k: result.summary[k] for k in ("tissue_fraction", "windows_with_tissue", "windows_skipped")},
        },
    )
    return result.n_nuclei


def _predict_whole(session: InferenceSession, path: Path, folder: Path, fingerprint: str, bars, overwrite: bool) -> int:
    image = read_rgb(path)
    tiles = bars.task(f"  {path.name} tiles", session.segmenter(session.scale_for()).n_tiles(*image.shape[:2]))
    if overwrite:
        (folder / DONE).unlink(missing_ok=True)
    n = predict_image(session, image, output_name(path), folder, fingerprint, tiles.advance)
    bars.remove(tiles)
    return n


def warn_if_synthetic(session: InferenceSession) -> None:
    if (session.hparams.get("data") or {}).get("synthetic"):
        log.warning(
            "%s was trained on synthetic tiles (data=synthetic): a smoke-test model, not one for real H&E images; "
            "train on the real data (data=paper) or use experiment=release",
            session.source,
        )


def predict(
    inputs: list[str | Path],
    out: str | Path,
    session: InferenceSession,
    overwrite: bool = False,
    progress: str = "auto",
    slide_settings=None,
) -> PredictSummary:
    """Predict every input image into ``out``; never raises for one bad image (it is listed in the summary).

    Slides, and images too large to handle whole, go through the windowed path (:mod:`nucleiseg.slides`) with
    ``slide_settings`` (:class:`~nucleiseg.slides.predict_slide.SlideSettings`)."""
    from nucleiseg.slides.predict_slide import SlideSettings
    from nucleiseg.slides.reader import is_slide

    slide_settings = slide_settings or SlideSettings()
    files, missing = expand_inputs(inputs)
    summary = PredictSummary(failed=list(missing))
    if not files and not missing:
        raise ConfigError(f"no image or slide ({', '.join(INPUT_SUFFIXES)}) found in {[str(i) for i in inputs]}")
    warn_if_synthetic(session)
    fingerprint = settings_fingerprint(session)
    out = Path(out).expanduser()
    nuclei = 0
    with Progress(progress) as bars:
        images_task = bars.task("images", len(files))
        for path in files:
            folder = out / output_name(path)
            state = _state(folder, fingerprint)
            if state == "done" and not overwrite:
                summary.skipped.append(path.name)
            elif state in ("foreign", "other") and not overwrite:
                why = "made by another model or other settings" if state == "other" else "of unknown origin"
                summary.not_written.append((path.name, why))
            else:
                try:
                    if is_slide(path, slide_settings.min_pixels):
                        n = predict_slide_input(session, path, folder, fingerprint, slide_settings, bars, overwrite)
                    else:
                        n = _predict_whole(session, path, folder, fingerprint, bars, overwrite)
                    summary.done.append((path.name, n))
                    nuclei += n
                except (NucleisegError, OSError, MemoryError) as error:
                    summary.failed.append((str(path), first_line(error)))
            images_task.advance(note=f"{path.name}, {nuclei} nuclei so far")
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
    for name, why in summary.not_written:
        console.print(
            f"[yellow]not written[/yellow] {name}: {out / output_name(Path(name))} holds outputs {why}; "
            "pass --overwrite to replace them"
        )
    for name, reason in summary.failed:
        console.print(f"[red]failed[/red] {name}: {reason}")
