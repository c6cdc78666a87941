"""``labels.tif``: every nucleus of a slide as an ``int32`` label image (its ``nucleus_id`` from the table and the
GeoJSON), tiled and pyramidal so QuPath, napari or tiffslide open it like the slide. Written tile by tile from the
windows' journal (each window's nuclei whole, over its core and margin, as in the GeoJSON), each reduced level by
subsampling, never the whole image in memory (tifffile takes the tiles from a generator)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile

from nucleiseg.predict.slides.reader import Slide

if TYPE_CHECKING:
    from nucleiseg.predict.slides.journal import Journal
    from nucleiseg.predict.slides.plan import Plan


def _paint(
    tile: np.ndarray,
    labels: np.ndarray,
    offset: int,
    region_y: int,
    region_x: int,
    tile_y: int,
    tile_x: int,
    step: int,
    only_empty: bool,
) -> None:
    """Copy the nonzero ``labels`` (read-level pixels from ``(region_y, region_x)``) that the reduced grid keeps
    into ``tile`` (whose first pixel is reduced pixel ``(tile_y, tile_x)``), as ``label + offset``."""
    height, width = labels.shape
    ys = np.arange(
        -(-max(region_y, tile_y * step) // step) * step, min(region_y + height, (tile_y + tile.shape[0]) * step), step
    )
    xs = np.arange(
        -(-max(region_x, tile_x * step) // step) * step, min(region_x + width, (tile_x + tile.shape[1]) * step), step
    )
    if not (ys.size and xs.size):
        return
    values = labels[np.ix_(ys - region_y, xs - region_x)]
    target = np.ix_(ys // step - tile_y, xs // step - tile_x)
    current = tile[target]
    write = values > 0
    if only_empty:
        write &= current == 0
    tile[target] = np.where(write, values + offset, current)


def _tiles(slide: Slide, plan: Plan, journal: Journal, offsets: dict[int, int], step: int) -> Iterator[np.ndarray]:
    """Tiles (``plan.core`` square) of the level that keeps every ``step``-th pixel, in row-major order.

    Each window's nuclei are painted whole (core and margin), so a nucleus across a seam is not cut. Where two
    windows' nuclei claim one pixel (their predictions overlap at a seam), the window whose core holds the pixel
    wins: every window is painted on empty pixels first, then each window's core over the rest."""
    core, margin = plan.core, plan.margin
    width, height = slide.level_dimensions[plan.level]
    columns, rows = -(-width // core), -(-height // core)
    out_w, out_h = -(-width // step), -(-height // step)
    cache: dict[int, np.ndarray | None] = {}
    for tile_y in range(0, out_h, core):
        for tile_x in range(0, out_w, core):
            tile = np.zeros((min(core, out_h - tile_y), min(core, out_w - tile_x)), np.int32)
            top, bottom = tile_y * step, (tile_y + tile.shape[0]) * step
            left, right = tile_x * step, (tile_x + tile.shape[1]) * step
            nearby = [
                window_row * columns + window_col
                for window_row in range(max(0, (top - margin) // core), min(rows, (bottom + margin - 1) // core + 1))
                for window_col in range(max(0, (left - margin) // core), min(columns, (right + margin - 1) // core + 1))
            ]
            for index in nearby:
                if index not in cache:
                    cache[index] = journal.labels(index) if index in offsets else None
            for only_empty in (True, False):
                for index in nearby:
                    labels = cache[index]
                    if labels is None:
                        continue
                    y0, x0 = (index // columns) * core, (index % columns) * core
                    if only_empty:
                        _paint(tile, labels, offsets[index], y0 - margin, x0 - margin, tile_y, tile_x, step, True)
                    else:  # the core: the part of the region inside the window itself
                        inner = labels[margin : labels.shape[0] - margin, margin : labels.shape[1] - margin]
                        _paint(tile, inner, offsets[index], y0, x0, tile_y, tile_x, step, False)
            yield tile
            # keep only the windows the next tiles can still need (this row of tiles and the next)
            for index in [i for i in cache if (i // columns + 1) * core + margin <= top]:
                del cache[index]


def write_labels(path: Path, slide: Slide, plan: Plan, journal: Journal, offsets: dict[int, int]) -> Path:
    """Write ``labels.tif`` at the read level's resolution, with reduced levels down to about one tile."""
    from nucleiseg.util.writing import atomic_stream

    width, height = slide.level_dimensions[plan.level]
    steps = [1]
    while max(width, height) // (steps[-1] * 2) >= plan.core:
        steps.append(steps[-1] * 2)
    mpp = plan.slide_mpp * plan.level_downsample if plan.slide_mpp else None
    with atomic_stream(path, "wb") as handle, tifffile.TiffWriter(handle, bigtiff=True) as writer:
        for number, step in enumerate(steps):
            shape = (-(-height // step), -(-width // step))
            options = {"resolution": (1e4 / (mpp * step),) * 2, "resolutionunit": "CENTIMETER"} if mpp else {}
            writer.write(
                _tiles(slide, plan, journal, offsets, step),
                shape=shape,
                dtype=np.int32,
                tile=(plan.core, plan.core),
                compression="zlib",
                subfiletype=1 if number else 0,
                metadata=None,
                **options,
            )
    return path
