"""``labels.tif``: every nucleus of a slide as an ``int32`` label image (its ``nucleus_id`` from the table and the
GeoJSON), tiled and pyramidal so QuPath, napari or tiffslide open it like the slide. Written tile by tile from the
windows' journal: one tile per window core, and each reduced level by subsampling, never the whole image in
memory (tifffile takes the tiles from a generator)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from nucleiseg.slides.reader import Slide


def _tiles(slide: Slide, plan, journal, offsets: dict[int, int], step: int) -> Iterator[np.ndarray]:
    """Tiles (``plan.core`` square) of the level that keeps every ``step``-th pixel, in row-major order."""
    core = plan.core
    width, height = slide.level_dimensions[plan.level]
    columns = -(-width // core)
    out_w, out_h = -(-width // step), -(-height // step)
    for tile_y in range(0, out_h, core):
        for tile_x in range(0, out_w, core):
            tile = np.zeros((min(core, out_h - tile_y), min(core, out_w - tile_x)), np.int32)
            # window cores covered by this tile (each window core is `core` read-level pixels)
            for window_row in range(tile_y * step // core, -(-(tile_y + tile.shape[0]) * step // core)):
                for window_col in range(tile_x * step // core, -(-(tile_x + tile.shape[1]) * step // core)):
                    index = window_row * columns + window_col
                    crop = journal.labels(index) if index in offsets else None
                    if crop is None:
                        continue
                    crop = np.where(crop > 0, crop + offsets[index], 0).astype(np.int32)
                    # pixels of this crop that the reduced grid keeps, placed in the tile
                    y0, x0 = window_row * core, window_col * core
                    ys = np.arange(
                        -(-y0 // step) * step, min(y0 + crop.shape[0], (tile_y + tile.shape[0]) * step), step
                    )
                    xs = np.arange(
                        -(-x0 // step) * step, min(x0 + crop.shape[1], (tile_x + tile.shape[1]) * step), step
                    )
                    ys, xs = ys[ys >= tile_y * step], xs[xs >= tile_x * step]
                    if ys.size and xs.size:
                        tile[np.ix_(ys // step - tile_y, xs // step - tile_x)] = crop[np.ix_(ys - y0, xs - x0)]
            yield tile


def write_labels(path: Path, slide: Slide, plan, journal, offsets: dict[int, int]) -> Path:
    """Write ``labels.tif`` at the read level's resolution, with reduced levels down to about one tile."""
    from nucleiseg.writing import atomic_stream

    width, height = slide.level_dimensions[plan.level]
    steps = [1]
    while max(width, height) // (steps[-1] * 2) >= plan.core:
        steps.append(steps[-1] * 2)
    mpp = slide.mpp * plan.level_downsample if slide.mpp else None
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
