"""``nucleiseg predict``: nuclei in a user's own images, ready to count, measure and open in QuPath.

For each input image ``NAME`` the folder ``OUT/NAME/`` receives ``probability.tif``, ``mask.png``,
``instances.tif``, ``overlay.png``, ``nuclei.geojson``, ``features.csv`` (+ ``.parquet`` with pyarrow) and,
last, ``done.json``, which names the input (size and content hash), the model and the settings. An image's
outputs are written beside the folder and moved in when all are ready; a slide's windows are journaled in it.

Re-running the command skips an input whose ``done.json`` was made from the same content by the same model and
settings, and resumes a slide's unfinished windows; outputs of another input (another file under the same name),
model or settings, or of unknown origin, are left alone unless ``--overwrite``, which replaces exactly the files
predict writes. One ``predict`` at a time writes into an output folder (a lock beside the outputs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nucleiseg.data.image_io import IMAGE_SUFFIXES, read_rgb
from nucleiseg.inference.export import geojson_bytes, geojson_nuclei, outline_overlay, warning_banner
from nucleiseg.inference.session import InferenceSession
from nucleiseg.postprocess.features import nucleus_features, write_features
from nucleiseg.predict.output_folder import DONE, OUTPUTS, clear_outputs, folder_state
from nucleiseg.predict.slide_input import predict_slide_input
from nucleiseg.predict.slides.reader import SLIDE_SUFFIXES
from nucleiseg.predict.typed import class_counts, with_types
from nucleiseg.util.errors import ConfigError, NucleisegError, first_line
from nucleiseg.util.progress import Progress
from nucleiseg.util.writing import install_files, png_bytes, tiff_bytes, write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    from nucleiseg.predict.slides.predict_slide import SlideSettings

log = logging.getLogger(__name__)
INPUT_SUFFIXES = tuple(dict.fromkeys(IMAGE_SUFFIXES + SLIDE_SUFFIXES))
LOCK = ".nucleiseg-predict.lock"


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
    source = session.path
    if source is not None and source.is_file():
        with source.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def predict_image(
    session: InferenceSession,
    image: np.ndarray,
    name: str,
    folder: Path,
    fingerprint: str,
    identity: dict | None = None,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Write every output of one image into ``folder``; return the number of nuclei found.

    The outputs are written into a scratch folder beside it and moved in only when all are ready: the folder
    then holds exactly this run's files (an earlier run's are removed first), ``done.json`` last."""
    import shutil

    scratch = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        started = time.perf_counter()
        mpp = session.input_mpp(name) if session.settings.scale is None else session.settings.microns_per_pixel
        prediction = session.predict(image, session.scale_for(mpp), progress=progress)
        instances = session.instances(prediction)
        classified = session.nucleus_classes(instances, prediction)
        features = with_types(nucleus_features(image, instances, name, mpp), classified, session.classes)
        write_bytes_atomic(scratch / "probability.tif", tiff_bytes(prediction.probability.astype(np.float32)))
        write_bytes_atomic(
            scratch / "mask.png", png_bytes((session.binarise(prediction.probability) * 255).astype(np.uint8))
        )
        write_bytes_atomic(scratch / "instances.tif", tiff_bytes(instances.astype(np.int32)))
        overlay = outline_overlay(image, instances, *((classified[0], session.classes) if classified else ()))
        if session.trained_on_synthetic:
            overlay = warning_banner(overlay, "model trained on synthetic tiles: not for real tissue")
        write_bytes_atomic(scratch / "overlay.png", png_bytes(overlay))
        write_bytes_atomic(
            scratch / "nuclei.geojson",
            geojson_bytes(
                geojson_nuclei(
                    instances, features, input_sha256=(identity or {}).get("sha256"), classes=session.classes
                )
            ),
        )
        written = [p.name for p in write_features(features, scratch / "features.csv")]
        outputs = [*(n for n in OUTPUTS if n != "features.csv"), *written]
        n_nuclei = int(instances.max())
        record = {
            "image": name,
            "input": identity,
            "n_nuclei": n_nuclei,
            **({"nuclei_by_class": class_counts(features, session.classes)} if classified else {}),
            "height": image.shape[0],
            "width": image.shape[1],
            "seconds": time.perf_counter() - started,
            "outputs": outputs,
            "fingerprint": fingerprint,
            "settings": session.describe(),
        }
        folder.mkdir(parents=True, exist_ok=True)
        clear_outputs(folder)
        install_files(scratch, folder, outputs)
        write_json_atomic(folder / DONE, record)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return n_nuclei


def _predict_whole(
    session: InferenceSession, path: Path, folder: Path, fingerprint: str, identity: dict, bars: Progress
) -> int:
    image = read_rgb(path)
    tiles = bars.task(f"  {path.name} tiles", session.segmenter(1.0).n_tiles(*image.shape[:2]))
    n = predict_image(session, image, output_name(path), folder, fingerprint, identity, tiles.advance)
    bars.remove(tiles)
    return n


def failure_reason(path: Path, error: Exception) -> str:
    """One line for a failed input (an image, a slide of a cohort): our errors say what they are; anything else
    also names its type."""
    log.debug("%s failed", path, exc_info=error)
    if isinstance(error, NucleisegError | OSError | MemoryError):
        return first_line(error)
    return f"{type(error).__name__}: {first_line(error)}; the file may be damaged or of an unsupported kind"


def predict(
    inputs: list[str | Path],
    out: str | Path,
    session: InferenceSession,
    overwrite: bool = False,
    progress: str = "auto",
    slide_settings: SlideSettings | None = None,
    roi: str | Path | None = None,
    lock: str = "folder",
) -> PredictSummary:
    """Predict every input image into ``out``; never raises for one bad image (it is listed in the summary).

    Slides, and images too large to handle whole, go through the windowed path (:mod:`nucleiseg.predict.slides`) with
    ``slide_settings`` (:class:`~nucleiseg.predict.slides.predict_slide.SlideSettings`). One ``predict`` at a time
    writes into ``out`` (a lock; a second is refused with the first one's process id). ``roi``: regions of interest
    (QuPath GeoJSON or a mask image) for a single slide: nuclei only inside them (:mod:`nucleiseg.predict.slides.roi`).
    ``lock="input"``: lock each input's folder instead of ``out`` (the shards of a cohort share ``out``; their
    launcher holds the cohort's lock), an input in use elsewhere is reported and skipped."""
    from nucleiseg.config.settings import defaults
    from nucleiseg.util.locking import exclusive

    slide_settings = slide_settings or defaults("slide")
    files, missing = expand_inputs(inputs)
    summary = PredictSummary(failed=list(missing))
    if not files and not missing:
        raise ConfigError(f"no image or slide ({', '.join(INPUT_SUFFIXES)}) found in {[str(i) for i in inputs]}")
    roi = _checked_roi(roi, files)
    session.warn_if_synthetic("your images")
    fingerprint = outputs_fingerprint(session, slide_settings, roi)
    out = writable_folder(Path(out).expanduser(), "--out")
    nuclei = 0
    whole = exclusive(out / LOCK, f"output folder {out}", enabled=lock == "folder")
    with whole, Progress(progress) as bars, ExitStack() as held:
        images_task = bars.task("images", len(files))
        for path in files:
            folder = out / output_name(path)
            try:
                if lock == "input":
                    held.close()
                    held.enter_context(exclusive(out / ".locks" / f"{folder.name}.lock", f"outputs of {path.name}"))
                nuclei += _predict_input(
                    session, path, folder, fingerprint, slide_settings, bars, summary, overwrite=overwrite, roi=roi
                )
            except Exception as error:  # noqa: BLE001 - one bad input is reported and the batch goes on
                summary.failed.append((str(path), failure_reason(path, error)))
            images_task.advance(note=f"{path.name}, {nuclei} nuclei so far")
    return summary


def writable_folder(folder: Path, option: str) -> Path:
    """``folder``, created if needed, once it is known that files can be written in it: a read-only or misplaced
    output folder is one line naming it, before any work (not a traceback from the first file written)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nucleiseg-write-test-"):
            pass
    except OSError as error:
        raise NucleisegError(
            f"{option} {folder}: cannot write there ({error.strerror or type(error).__name__}); expected a folder you "
            "can write to"
        ) from None
    return folder


def _checked_roi(roi: str | Path | None, files: list[Path]) -> Path | None:
    """The region file ``--roi`` (expanded), refused unless there is exactly one input and the file exists."""
    if roi is None:
        return None
    roi = Path(roi).expanduser()
    if len(files) != 1:
        raise ConfigError(f"--roi {roi}: regions belong to one slide; give exactly one input (got {len(files)})")
    if not roi.is_file():
        raise FileNotFoundError(f"{roi}: region file (--roi) not found")
    return roi


def outputs_fingerprint(session: InferenceSession, slide_settings: SlideSettings, roi: Path | None) -> str:
    """:func:`settings_fingerprint`, with the regions of interest and how they are used when there are some: other
    regions are other outputs, never "already done"."""
    fingerprint = settings_fingerprint(session)
    if roi is not None:
        fingerprint = hashlib.sha256((fingerprint + slide_settings.roi_mode).encode() + roi.read_bytes()).hexdigest()
    return fingerprint


@dataclass(frozen=True)
class Outcome:
    """What :func:`predict_into` did with one input: ``predicted`` (``nuclei`` found), ``skipped`` (finished
    before, same settings and input) or ``not_written`` (the folder holds other outputs, ``why``)."""

    kind: str
    nuclei: int = 0
    why: str = ""


def predict_into(
    session: InferenceSession,
    path: Path,
    folder: Path,
    fingerprint: str,
    slide_settings: SlideSettings,
    bars: Progress,
    *,
    overwrite: bool,
    roi: Path | None,
) -> Outcome:
    """One input into ``folder``, as ``predict`` and each slide of a cohort do it: skipped when done already, not
    written when ``folder`` holds other outputs (without ``overwrite``), else predicted, whole or as a slide
    (resumed when an earlier run of the same settings was interrupted)."""
    from nucleiseg.predict.input_identity import input_identity
    from nucleiseg.predict.slides.reader import is_slide

    identity = input_identity(path)
    slide = roi is not None or is_slide(path, slide_settings.min_pixels)
    state = folder_state(folder, fingerprint, identity, labels=slide and slide_settings.labels)
    if state.kind == "done" and not overwrite:
        return Outcome("skipped")
    if state.kind in ("foreign", "other") and not overwrite:
        return Outcome("not_written", why=state.why)
    if slide:
        fresh = overwrite or state.kind != "interrupted"
        n = predict_slide_input(session, path, folder, fingerprint, identity, slide_settings, bars, fresh, roi)
    else:
        n = _predict_whole(session, path, folder, fingerprint, identity, bars)
    return Outcome("predicted", n)


def _predict_input(
    session: InferenceSession,
    path: Path,
    folder: Path,
    fingerprint: str,
    slide_settings: SlideSettings,
    bars: Progress,
    summary: PredictSummary,
    *,
    overwrite: bool,
    roi: Path | None,
) -> int:
    """:func:`predict_into`, listed in ``summary``; returns the nuclei found (0 when not predicted)."""
    outcome = predict_into(session, path, folder, fingerprint, slide_settings, bars, overwrite=overwrite, roi=roi)
    if outcome.kind == "skipped":
        summary.skipped.append(path.name)
    elif outcome.kind == "not_written":
        summary.not_written.append((path.name, outcome.why))
    else:
        summary.done.append((path.name, outcome.nuclei))
    return outcome.nuclei


def print_summary(summary: PredictSummary, out: Path) -> None:
    from rich.table import Table

    from nucleiseg.util.console import make_console

    console = make_console()
    console.print(f"nucleiseg predict -> {out}")
    table = Table()
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
