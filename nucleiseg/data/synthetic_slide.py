"""Write test and benchmark slides: tiled, pyramidal TIFFs with resolution tags, built tile by tile (tifffile
takes the tiles from a generator, so a slide far larger than memory can be written). Content comes from a
function of the tile's position: H&E tiles (real or synthetic) inside tissue regions, white glass elsewhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

TileFunction = Callable[[int, int, int, int], np.ndarray]  # (x, y, width, height) at level 0 -> uint8 HxWx3


def _level_tiles(content: TileFunction, width: int, height: int, tile: int, step: int) -> Iterator[np.ndarray]:
    out_w, out_h = -(-width // step), -(-height // step)
    for y in range(0, out_h, tile):
        for x in range(0, out_w, tile):
            h, w = min(tile, out_h - y), min(tile, out_w - x)
            full = content(x * step, y * step, min(w * step, width - x * step), min(h * step, height - y * step))
            yield np.ascontiguousarray(full[::step, ::step][:h, :w])


def write_slide(
    path: Path,
    width: int,
    height: int,
    content: TileFunction,
    mpp: float | None = 0.25,
    tile: int = 256,
    compression: str = "zlib",
    min_side: int = 512,
) -> Path:
    """A pyramidal tiled TIFF of ``width`` x ``height`` (levels halve until ``min_side``), with ``mpp``."""
    steps = [1]
    while max(width, height) // (steps[-1] * 2) >= min_side:
        steps.append(steps[-1] * 2)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for number, step in enumerate(steps):
            options = {"resolution": (1e4 / (mpp * step),) * 2, "resolutionunit": "CENTIMETER"} if mpp else {}
            writer.write(
                _level_tiles(content, width, height, tile, step),
                shape=(-(-height // step), -(-width // step), 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=1 if number else 0,
                metadata=None,
                **options,
            )
    return path


def tissue_content(
    pool: Sequence[np.ndarray], boxes: Sequence[tuple[int, int, int, int]], background: int = 245
) -> TileFunction:
    """H&E from ``pool`` (tiles repeated over the plane) inside ``boxes`` (x0, y0, x1, y1), glass elsewhere."""
    size = pool[0].shape[0]

    def content(x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), background, np.uint8)
        for x0, y0, x1, y1 in boxes:
            left, top, right, bottom = max(x, x0), max(y, y0), min(x + w, x1), min(y + h, y1)
            if right <= left or bottom <= top:
                continue
            for ty in range(top // size * size, bottom, size):
                for tx in range(left // size * size, right, size):
                    source = pool[(ty // size * 7 + tx // size * 13) % len(pool)]
                    a, b = max(top, ty), min(bottom, ty + size)
                    c, d = max(left, tx), min(right, tx + size)
                    out[a - y : b - y, c - x : d - x] = source[a - ty : b - ty, c - tx : d - tx]
        return out

    return content


def discs_content(centres: Sequence[tuple[float, float]], radius: float, background: int = 255) -> TileFunction:
    """Black discs of ``radius`` at ``centres`` (x, y) on white: an image whose nuclei are known exactly."""
    centres_array = np.asarray(centres, dtype=np.float64).reshape(-1, 2)

    def content(x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), background, np.uint8)
        rows, cols = np.mgrid[y : y + h, x : x + w]
        near = centres_array[
            (centres_array[:, 0] > x - radius - 1)
            & (centres_array[:, 0] < x + w + radius + 1)
            & (centres_array[:, 1] > y - radius - 1)
            & (centres_array[:, 1] < y + h + radius + 1)
        ]
        for cx, cy in near:
            out[(cols + 0.5 - cx) ** 2 + (rows + 0.5 - cy) ** 2 <= radius**2] = 0
        return out

    return content


def synthetic_pool(size: int = 256, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Synthetic H&E tiles (dense nuclei) for slides when no real tiles are at hand."""
    from nucleiseg.data.synthetic import SyntheticSpec, synthetic_tile

    return [synthetic_tile(SyntheticSpec(size, size, n_nuclei=size // 6), seed + k)[0] for k in range(count)]
