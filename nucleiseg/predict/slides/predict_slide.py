"""Segment every nucleus of a whole slide in bounded memory, resumable window by window.

1. The slide is read at the level closest to the model's training resolution (from the slide's microns per pixel
   and the checkpoint's; ``--mpp`` or ``--scale`` when the file has no resolution), the remaining factor resampled.
2. Tissue is found on a low-resolution view (:mod:`nucleiseg.predict.slides.tissue`); only windows that can hold a
   nucleus of the tissue (and of the regions of interest) are read (:func:`select_windows`).
3. The slide is cut into square *core* windows; each is read with a margin of context on every side and
   predicted with the inference session. A nucleus belongs to the window whose core holds its centroid, and is
   kept whole from that window's prediction: with a margin wider than the largest nucleus, every nucleus on a
   seam is reported exactly once and never cut.
4. Each finished window is written to ``OUT/NAME/.windows/`` at once (its nuclei as GeoJSON features and table
   rows, optionally its labels); a killed run continues from the windows it finished. Memory holds one window.
5. At the end the windows are streamed into ``nuclei.geojson`` (QuPath), ``features.csv`` (+ Parquet),
   ``overview.png`` (the slide with every nucleus marked), ``tissue.png``, optionally ``labels.tif`` (a tiled
   pyramidal label image), ``slide.json`` and, last, ``done.json``.

Coordinates in the GeoJSON and the table are level-0 pixels of the slide (what QuPath shows), lengths also in
micrometres when the slide's pixel size is known.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import ndimage

from nucleiseg.data.transforms import resize_image
from nucleiseg.inference.export import nucleus_features_geojson
from nucleiseg.inference.session import InferenceSession
from nucleiseg.postprocess.features import nucleus_features
from nucleiseg.predict.slides.journal import JOURNAL, Journal
from nucleiseg.predict.slides.plan import Plan, SlideSettings, Window, plan_slide
from nucleiseg.predict.slides.reader import Slide
from nucleiseg.predict.slides.slide_outputs import assemble
from nucleiseg.predict.slides.tissue import is_greyscale, tissue_fraction, tissue_mask
from nucleiseg.predict.typed import with_types

if TYPE_CHECKING:
    from nucleiseg.predict.slides.roi import Regions
    from nucleiseg.util.progress import Progress

log = logging.getLogger(__name__)
SLIDE_OUTPUTS = ("nuclei.geojson", "features.csv", "overview.png", "tissue.png", "slide.json")
SLIDE_OWNED = (*SLIDE_OUTPUTS, "features.parquet", "labels.tif", JOURNAL)  # what --overwrite replaces


def _centroids(labels: np.ndarray) -> np.ndarray:
    """``(n, 2)`` (row, col) centroids of labels 1..n."""
    count = int(labels.max())
    if not count:
        return np.zeros((0, 2))
    return np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, np.arange(1, count + 1)))


def _owned(labels: np.ndarray, core_box: tuple[float, float, float, float]) -> tuple[np.ndarray, int]:
    """Keep the nuclei whose centroid lies in the core ``(top, left, bottom, right)``, relabelled 1..n; also
    count kept nuclei touching the read region's edge (larger than the margin: possibly cut)."""
    from skimage.segmentation import relabel_sequential

    centres = _centroids(labels)
    top, left, bottom, right = core_box
    inside = (centres[:, 0] >= top) & (centres[:, 0] < bottom) & (centres[:, 1] >= left) & (centres[:, 1] < right)
    keep = np.zeros(len(centres) + 1, bool)
    keep[1:] = inside
    kept = np.where(keep[labels], labels, 0)
    kept = relabel_sequential(kept)[0].astype(np.int32)
    edge = np.unique(np.concatenate([kept[0], kept[-1], kept[:, 0], kept[:, -1]]))
    return kept, int((edge > 0).sum())


def _slide_columns(frame: pd.DataFrame, window: Window, plan: Plan) -> pd.DataFrame:
    """Window feature rows (model pixels) -> slide coordinates: level-0 pixels, and micrometres when known."""
    d = plan.model_downsample
    origin_x = (window.x - plan.margin) * plan.level_downsample
    origin_y = (window.y - plan.margin) * plan.level_downsample
    out = pd.DataFrame({"local_id": frame.nucleus_id, "window": window.index})
    out["centroid_x"] = origin_x + frame.centroid_x * d
    out["centroid_y"] = origin_y + frame.centroid_y * d
    out["area_px"] = frame.area_px * d * d
    out["perimeter_px"] = frame.perimeter_px * d
    out["equivalent_diameter_px"] = frame.equivalent_diameter_px * d
    for column in ("eccentricity", "solidity", "orientation_rad", "haematoxylin_mean", "eosin_mean"):
        out[column] = frame[column]
    if plan.slide_mpp:
        out["area_um2"] = out.area_px * plan.slide_mpp**2
        out["perimeter_um"] = out.perimeter_px * plan.slide_mpp
        out["equivalent_diameter_um"] = out.equivalent_diameter_px * plan.slide_mpp
    return out


def _in_regions(kept: np.ndarray, window: Window, plan: Plan, roi: Regions | None) -> tuple[np.ndarray, list[str]]:
    """Only the nuclei whose centroid lies in a region of interest, relabelled 1..n, and each one's region."""
    from skimage.segmentation import relabel_sequential

    if roi is None:
        return kept, []
    centres = _centroids(kept)
    d = plan.model_downsample
    xs = (window.x - plan.margin) * plan.level_downsample + centres[:, 1] * d
    ys = (window.y - plan.margin) * plan.level_downsample + centres[:, 0] * d
    region = roi.label_at(xs, ys) if len(centres) else np.zeros(0, np.int32)
    keep = np.concatenate([[False], region > 0])
    kept = relabel_sequential(np.where(keep[kept], kept, 0))[0].astype(np.int32)
    return kept, [roi.names[r - 1] for r in region[region > 0]]


def predict_window(
    slide: Slide, session: InferenceSession, plan: Plan, window: Window, roi: Regions | None = None
) -> dict[str, Any]:
    """Read, predict and separate one window; keep the nuclei it owns (and, with regions of interest ``roi``,
    only those inside them). Returns its journal entry."""
    read_w, read_h = window.width + 2 * plan.margin, window.height + 2 * plan.margin
    region = slide.read(plan.level, window.x - plan.margin, window.y - plan.margin, read_w, read_h)
    model_h, model_w = max(1, round(read_h * plan.resize)), max(1, round(read_w * plan.resize))
    image = region if (model_h, model_w) == (read_h, read_w) else resize_image(region, model_h, model_w)
    prediction = session.predict(image)
    labels = session.instances(prediction)
    classified = session.nucleus_classes(labels, prediction)
    r = plan.resize
    core = (plan.margin * r, plan.margin * r, (plan.margin + window.height) * r, (plan.margin + window.width) * r)
    kept, touching = _owned(labels, core)
    kept, regions = _in_regions(kept, window, plan, roi)
    if classified is not None:  # the kept nuclei's classes, by their new labels
        original = np.zeros(int(kept.max()) + 1, np.int64)
        original[kept[kept > 0]] = labels[kept > 0]
        classified = (classified[0][original], classified[1][original])
    features = with_types(nucleus_features(image, kept, slide.path.stem), classified, session.classes)
    origin = ((window.x - plan.margin) * plan.level_downsample, (window.y - plan.margin) * plan.level_downsample)
    geojson = nucleus_features_geojson(kept, None, origin, plan.model_downsample)
    rows = _slide_columns(features, window, plan)
    if classified is not None:
        rows["type"], rows["type_probability"] = features["type"].to_numpy(), features["type_probability"].to_numpy()
    if roi is not None:
        rows["region"] = regions
    entry = {"index": window.index, "n": int(kept.max()), "touching_edge": touching, "features": geojson}
    entry["rows"] = json.loads(rows.to_json(orient="records"))
    if kept.max():
        entry["labels"] = _read_level_labels(kept, plan, window)
    return entry


def _read_level_labels(kept: np.ndarray, plan: Plan, window: Window) -> np.ndarray:
    """The nuclei a window owns, whole, over its whole read region (core and margin) at the read level
    (nearest-neighbour back from the model's scale): a nucleus across a core seam is kept entire, as in the
    GeoJSON, and :mod:`nucleiseg.predict.slides.labels` paints it across the seam."""
    read_h, read_w = window.height + 2 * plan.margin, window.width + 2 * plan.margin
    if kept.shape != (read_h, read_w):
        rows = np.minimum((np.arange(read_h) * plan.resize).astype(int), kept.shape[0] - 1)
        cols = np.minimum((np.arange(read_w) * plan.resize).astype(int), kept.shape[1] - 1)
        kept = kept[rows][:, cols]
    return kept


def _windows_in_order(
    slide: Slide,
    session: InferenceSession,
    plan: Plan,
    todo: list[Window],
    roi: Regions | None,
    settings: SlideSettings,
    chosen: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """The journal entries of ``todo``, in order, with up to ``workers`` windows in flight (``slide.workers``; with
    ``auto``, sized after the first window, :mod:`nucleiseg.predict.slides.workers`; the number used goes into
    ``chosen``): while one window is in the network (whose kernels release the GIL), the next is read and the
    previous separated into nuclei, so the cores that the network leaves idle do the reading and post-processing.
    Each window is computed exactly as alone (the outputs do not depend on ``workers``); memory holds at most
    ``workers`` windows."""
    workers = settings.workers
    if workers == "auto" and todo:
        from nucleiseg.predict.slides.workers import choose_workers, measure_window

        first, footprint = measure_window(lambda: predict_window(slide, session, plan, todo[0], roi))
        yield first
        todo = todo[1:]
        workers, why = choose_workers(footprint, settings.memory_gb, settings.max_workers)
        log.info("%s: slide.workers=auto: %d window(s) in flight (%s)", slide.path.name, workers, why)
    chosen["workers"] = workers if workers != "auto" else 1
    if workers == "auto" or workers <= 1:
        for window in todo:
            yield predict_window(slide, session, plan, window, roi)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import torch

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nucleiseg-window")
    in_flight: deque = deque()
    # windows in the network at once share the cores: each gets its share of threads (ONNX Runtime)
    with session.network_threads(max(1, torch.get_num_threads() // workers)):
        try:
            for window in todo:
                in_flight.append(pool.submit(predict_window, slide, session, plan, window, roi))
                if len(in_flight) >= workers:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class SlideResult:
    n_nuclei: int
    summary: dict[str, Any]
    outputs: list[str]  # the files this run wrote (slide.json and done.json are written after)


@dataclass
class Selection:
    """Which windows are predicted, from a low-resolution view of the slide: ``chosen`` (window indices) and the
    others counted by reason (``outside the regions``, ``no tissue``, ``under slide.min_tissue``)."""

    chosen: list[int]
    skipped: dict[str, int]
    thumbnail: np.ndarray
    thumb_downsample: float
    mask: np.ndarray  # where nuclei are looked for (tissue, within the regions), on the thumbnail's grid


def select_windows(
    slide: Slide, plan: Plan, settings: SlideSettings, windows: list[Window], roi: Regions | None = None
) -> Selection:
    """The windows that can hold a nucleus of the tissue (and of the regions): no nucleus may be lost to window
    selection. A window is predicted when its core overlaps the tissue grown by the margin (a nucleus whose pixels
    reach the tissue has its centroid within a margin of it, and belongs to the window whose core holds that
    centroid) and, with regions, when its core overlaps a region (tested exactly on the outlines, so a window that a
    region clips by a strip is predicted). ``slide.min_tissue`` can ask for more tissue than that (0: any)."""
    from collections import Counter

    from scipy import ndimage

    thumbnail, thumb_downsample = slide.thumbnail(settings.thumbnail)
    if is_greyscale(thumbnail):
        log.warning(
            "%s: a greyscale slide: tissue is found by darkness, but the model was trained on H&E colour images and "
            "will miss or misjudge nuclei; predict on the colour scan if there is one",
            slide.path,
        )
    mask = tissue_mask(thumbnail)
    if roi is not None:
        inside = roi.on_grid(mask.shape, thumb_downsample)
        mask = (mask & inside) if settings.roi_mode == "intersect" else inside
    reach = max(1, math.ceil(plan.margin * plan.level_downsample / thumb_downsample))  # the margin, thumbnail px
    near = ndimage.maximum_filter(mask, size=2 * reach + 1) if mask.any() else mask
    factor = plan.level_downsample / thumb_downsample  # read-level pixels -> thumbnail pixels
    chosen, skipped = [], Counter()
    for w in windows:
        if roi is not None:
            d = plan.level_downsample
            if not roi.touches_box((w.x * d, w.y * d, (w.x + w.width) * d, (w.y + w.height) * d)):
                skipped["outside the regions"] += 1
                continue
        share = tissue_fraction(near, (w.x * factor, w.y * factor, (w.x + w.width) * factor, (w.y + w.height) * factor))
        if share <= 0:
            skipped["no tissue" if roi is None or settings.roi_mode == "intersect" else "outside the regions"] += 1
        elif share < settings.min_tissue:
            skipped["under slide.min_tissue"] += 1
        else:
            chosen.append(w.index)
    return Selection(chosen, dict(skipped), thumbnail, thumb_downsample, mask)


def predict_slide(
    slide: Slide,
    folder: Path,
    session: InferenceSession,
    settings: SlideSettings,
    fingerprint: str,
    progress: Progress,
    identity: dict | None = None,
    roi: Regions | None = None,
) -> SlideResult:
    """Segment ``slide`` into ``folder`` (resuming the windows a killed run finished); see the module docstring.
    ``roi``: :class:`~nucleiseg.predict.slides.roi.Regions` to predict in (with or in place of the tissue found)."""
    started = time.perf_counter()
    plan = plan_slide(slide, session, settings)
    windows = plan.windows(slide)
    selection = select_windows(slide, plan, settings, windows, roi)
    chosen = selection.chosen
    journal = Journal(folder)
    journal.start(fingerprint, plan, chosen, identity)
    finished = journal.done(with_labels=settings.labels)
    task = progress.task(f"{slide.path.name} windows", len(chosen))
    nuclei = sum(entry["n"] for entry in journal.entries() if entry["index"] in finished)
    if finished:
        task.advance(len(finished & set(chosen)), note=f"{nuclei} nuclei (resumed)")
    in_flight: dict[str, Any] = {}
    for entry in _windows_in_order(
        slide, session, plan, [windows[i] for i in chosen if i not in finished], roi, settings, in_flight
    ):
        if not settings.labels:
            entry.pop("labels", None)
        journal.write(entry)
        nuclei += entry["n"]
        task.advance(note=f"{nuclei} nuclei")
    progress.remove(task)
    seconds = time.perf_counter() - started
    summary = {
        "slide": str(slide.path),
        "format": slide.format,
        "dimensions": list(slide.dimensions),
        "levels": len(slide.level_dimensions),
        "microns_per_pixel": plan.slide_mpp,
        "plan": asdict(plan),
        "tissue_fraction": float(selection.mask.mean()),
        "windows": len(windows),
        "windows_with_tissue": len(chosen),
        "windows_skipped": len(windows) - len(chosen),
        "windows_skipped_by_reason": selection.skipped,
        "tissue_megapixels": sum(windows[i].width * windows[i].height for i in chosen) * plan.resize**2 / 1e6,
        "seconds_this_session": seconds,
        "windows_in_flight": in_flight.get("workers"),
    }
    counts, outputs = assemble(
        folder,
        slide,
        plan,
        journal,
        selection.thumbnail,
        selection.thumb_downsample,
        selection.mask,
        settings,
        roi,
        session.classes,
    )
    summary.update(counts)
    if settings.labels:  # labels.tif is at the read level (its TIFF resolution tags say so too), not level 0
        summary["labels_tif"] = {
            "level": plan.level,
            "level0_pixels_per_pixel": plan.level_downsample,
            "microns_per_pixel": plan.slide_mpp * plan.level_downsample if plan.slide_mpp else None,
        }
    return SlideResult(summary["n_nuclei"], summary, outputs)
