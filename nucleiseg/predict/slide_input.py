"""One slide (or an image too large to handle whole) into ``OUT/NAME/`` for ``nucleiseg predict``: the windowed path
(:mod:`nucleiseg.predict.slides`), its regions of interest, ``slide.json`` and ``done.json``, and an ``--overwrite``
that replaces the old outputs only once the new ones are complete."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from nucleiseg.inference.session import InferenceSession
from nucleiseg.predict.output_folder import DONE, clear_outputs, owned_names
from nucleiseg.util.progress import Progress
from nucleiseg.util.writing import write_json_atomic

if TYPE_CHECKING:
    from nucleiseg.predict.slides.predict_slide import SlideSettings

log = logging.getLogger(__name__)


def predict_slide_input(
    session: InferenceSession,
    path: Path,
    folder: Path,
    fingerprint: str,
    identity: dict,
    slide_settings: SlideSettings,
    bars: Progress,
    fresh: bool,
    roi: Path | None = None,
) -> int:
    """A whole slide (or any image too large to handle whole) through the windowed path; returns nuclei.
    ``fresh``: start over; else resume the journal's windows. Starting over a folder that holds outputs
    (``--overwrite``) predicts beside it (``.NAME.replacing/``) and replaces the old outputs only when the new ones
    are complete: a slide that fails half-way leaves what the user had, as images do."""
    import shutil

    staging = folder.parent / f".{folder.name}.replacing"
    shutil.rmtree(staging, ignore_errors=True)  # a replacement an earlier run did not finish
    if not (fresh and folder.is_dir() and any((folder / name).exists() for name in owned_names())):
        if fresh:
            clear_outputs(folder)
        return _predict_slide_into(session, path, folder, fingerprint, identity, slide_settings, bars, roi)
    staging.mkdir(parents=True)
    n = _predict_slide_into(session, path, staging, fingerprint, identity, slide_settings, bars, roi)
    clear_outputs(folder)
    for item in staging.iterdir():
        item.replace(folder / item.name)
    staging.rmdir()
    return n


def _predict_slide_into(
    session: InferenceSession,
    path: Path,
    folder: Path,
    fingerprint: str,
    identity: dict,
    slide_settings: SlideSettings,
    bars: Progress,
    roi: Path | None,
) -> int:
    from nucleiseg.predict.slides.predict_slide import predict_slide
    from nucleiseg.predict.slides.reader import open_slide

    (folder / DONE).unlink(missing_ok=True)  # written again, last, when this run has finished
    folder.mkdir(parents=True, exist_ok=True)
    slide = open_slide(path, session.settings.microns_per_pixel)
    try:
        regions = None
        if roi is not None:
            from nucleiseg.predict.slides.roi import read_roi

            regions = read_roi(roi, slide.dimensions)
            for note in regions.notes:
                log.warning("%s: %s", roi.name, note)
        result = predict_slide(slide, folder, session, slide_settings, fingerprint, bars, identity, regions)
    finally:
        slide.close()
    summary = result.summary
    write_json_atomic(folder / "slide.json", summary)
    reasons = ", ".join(f"{n} {why}" for why, n in summary["windows_skipped_by_reason"].items()) or "none"
    log.info(
        "%s: tissue %.1f%% of the slide; %d of %d windows predicted, skipped: %s; %d nuclei",
        path.name,
        100 * summary["tissue_fraction"],
        summary["windows_with_tissue"],
        summary["windows"],
        reasons,
        result.n_nuclei,
    )
    write_json_atomic(
        folder / DONE,
        {
            "image": path.name,
            "input": identity,
            "n_nuclei": result.n_nuclei,
            "outputs": [*result.outputs, "slide.json"],
            "fingerprint": fingerprint,
            "settings": session.describe(),
            "slide": {
                k: summary[k]
                for k in ("tissue_fraction", "windows_with_tissue", "windows_skipped", "windows_skipped_by_reason")
            },
            **({"roi": str(roi), "regions": summary["regions"]} if roi is not None else {}),
        },
    )
    _drop_journal(folder)
    return result.n_nuclei


def _drop_journal(folder: Path) -> None:
    """A finished slide's window journal (``.windows/``, larger than its GeoJSON) goes once ``done.json`` says
    the slide is finished; asking for ``labels.tif`` later predicts the windows again."""
    import shutil

    from nucleiseg.predict.slides.journal import JOURNAL

    shutil.rmtree(folder / JOURNAL, ignore_errors=True)
