"""Synthetic H&E-like tiles with exact instance masks, for tests and the offline ``data=synthetic`` config.

A tile is pink eosin stroma with fibre texture, and purple haematoxylin nuclei: ellipses of varied size,
elongation and stain, a share of them placed touching or overlapping a neighbour (the hard case of the
paper), with chromatin texture, blur and sensor noise. The instance mask is exact: a pixel belongs to the
nucleus drawn last over it, as in an annotation where the upper nucleus hides the lower one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse

from nucleiseg.data.source import SourceImage

STROMA_RGB = np.array([232.0, 170.0, 205.0])
NUCLEUS_RGB = np.array([92.0, 58.0, 145.0])


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of one synthetic tile; the seed makes it reproducible."""

    height: int = 128
    width: int = 128
    n_nuclei: int = 12
    radius_range: tuple[float, float] = (4.0, 9.0)
    touching_fraction: float = 0.4
    noise_std: float = 6.0


def synthetic_tile(spec: SyntheticSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image uint8 HxWx3, instance_mask int32 HxW)`` for ``spec`` and ``seed``."""
    rng = np.random.default_rng(seed)
    h, w = spec.height, spec.width
    fibres = ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma=(1.0, 4.0))
    image = STROMA_RGB + 40.0 * fibres[..., None] * np.array([0.3, 1.0, 0.6]) + rng.normal(0, 8, size=3)
    mask = np.zeros((h, w), dtype=np.int32)
    centres: list[tuple[float, float, float]] = []
    label = 0
    for _ in range(spec.n_nuclei):
        radius = rng.uniform(*spec.radius_range)
        if centres and rng.random() < spec.touching_fraction:
            # place it against a previous nucleus: centre distance between 0.7 and 1.0 of the radii sum,
            # i.e. from overlapping to just touching
            cy, cx, r0 = centres[rng.integers(len(centres))]
            angle = rng.uniform(0, 2 * np.pi)
            distance = (r0 + radius) * rng.uniform(0.7, 1.0)
            cy, cx = cy + distance * np.sin(angle), cx + distance * np.cos(angle)
        else:
            cy, cx = rng.uniform(radius, h - radius), rng.uniform(radius, w - radius)
        elongation = rng.uniform(1.0, 1.8)
        rows, cols = ellipse(cy, cx, radius, radius * elongation, shape=(h, w), rotation=rng.uniform(0, np.pi))
        if rows.size < 4:
            continue
        label += 1
        centres.append((cy, cx, radius))
        mask[rows, cols] = label
        stain = NUCLEUS_RGB * rng.uniform(0.75, 1.25) + rng.normal(0, 10, size=3)
        chromatin = rng.normal(0, 12, size=(rows.size, 1))
        image[rows, cols] = stain + chromatin
    image = ndimage.gaussian_filter(image, sigma=(0.7, 0.7, 0))
    image = image + rng.normal(0, spec.noise_std, size=image.shape)
    # renumber: a nucleus drawn over completely by later ones leaves no pixel and no label
    present = np.unique(mask[mask > 0])
    lookup = np.zeros(label + 1, dtype=np.int32)
    lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return np.clip(image, 0, 255).astype(np.uint8), lookup[mask]


@lru_cache(maxsize=256)
def _cached_tile(spec: SyntheticSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return synthetic_tile(spec, seed)


def synthetic_sources(
    dataset: str, images_per_patient: list[int], spec: SyntheticSpec, seed: int = 0
) -> list[SourceImage]:
    """A synthetic stand-in for a dataset: ``images_per_patient[i]`` tiles for patient ``i + 1``.

    Names follow TNBC's ``PP_K`` pattern so every split and manifest rule applies unchanged.
    """
    sources = []
    for patient_index, count in enumerate(images_per_patient, start=1):
        for k in range(1, count + 1):
            # arithmetic, not hash(): Python salts str hashes per process, and tiles must be the same in every run
            tile_seed = seed * 1_000_003 + sum(map(ord, dataset)) * 10_007 + patient_index * 101 + k
            name = f"{patient_index:02d}_{k}"
            path = Path("synthetic") / dataset / name

            def load_image(_path: Path, s: int = tile_seed) -> np.ndarray:
                return _cached_tile(spec, s)[0]

            def load_mask(_path: Path, _shape: tuple[int, int], s: int = tile_seed) -> np.ndarray:
                return _cached_tile(spec, s)[1]

            sources.append(
                SourceImage(dataset, name, f"{dataset}-p{patient_index:02d}", path, path, load_image, load_mask)
            )
    return sources


def write_synthetic_folder(out: str | Path, count: int, size: int, seed: int = 0, overwrite: bool = False) -> Path:
    """``count`` synthetic tiles of ``size`` px as ``out/images/synthetic_KK.png`` with their instance labels in
    ``out/masks/synthetic_KK.tif`` (int32): images to try ``predict`` and ``evaluate --images --masks`` on
    without any download. An existing non-empty ``images``/``masks`` folder is refused unless ``overwrite``."""
    from nucleiseg.util.errors import ConfigError
    from nucleiseg.util.writing import png_bytes, tiff_bytes, write_bytes_atomic

    if count < 1 or size < 32:
        raise ConfigError(f"data synthetic: --count must be >= 1 and --size >= 32 (got {count}, {size})")
    out = Path(out)
    folders = out / "images", out / "masks"
    for folder in folders:
        if folder.is_dir() and any(folder.iterdir()) and not overwrite:
            raise ConfigError(f"{folder} is not empty: choose another --to or add --overwrite")
        folder.mkdir(parents=True, exist_ok=True)
    # nuclei per tile in the proportion of the training tiles (12 in 128 x 128)
    spec = SyntheticSpec(size, size, n_nuclei=max(1, round(12 * size * size / 128**2)))
    for k in range(count):
        image, labels = synthetic_tile(spec, seed * 1_000_003 + k)
        write_bytes_atomic(folders[0] / f"synthetic_{k:02d}.png", png_bytes(image))
        write_bytes_atomic(folders[1] / f"synthetic_{k:02d}.tif", tiff_bytes(labels.astype(np.int32)))
    return out
