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


@dataclass(frozen=True)
class NucleusClass:
    """One class of synthetic nucleus: its share of the nuclei, size (minor semi-axis, px), shape (major / minor
    axis) and stain; ``rim_darkening`` > 0 gives a pale centre and a dark rim (vesicular chromatin)."""

    name: str
    frequency: float
    radius_range: tuple[float, float]
    elongation_range: tuple[float, float]
    stain_rgb: tuple[float, float, float]
    rim_darkening: float = 0.0
    colour: tuple[int, int, int] = (0, 200, 0)  # its colour in classes.json (QuPath shows classes in colour)


# Three classes a pathologist tells apart at a glance: large pale-vesicular tumour nuclei, small round dark
# lymphocytes, thin elongated stromal (spindle) nuclei.
TYPED_CLASSES = (
    NucleusClass("tumour", 0.4, (6.5, 9.5), (1.0, 1.5), (150.0, 105.0, 190.0), 0.45, (220, 40, 40)),
    NucleusClass("lymphocyte", 0.35, (3.0, 4.2), (1.0, 1.15), (50.0, 25.0, 95.0), 0.0, (40, 160, 40)),
    NucleusClass("stroma", 0.25, (1.6, 2.4), (3.0, 5.0), (95.0, 55.0, 140.0), 0.0, (40, 80, 220)),
)


@dataclass(frozen=True)
class TypedSyntheticSpec:
    """Parameters of one typed synthetic tile: class names, shares, sizes, shapes and stains in ``classes``."""

    height: int = 128
    width: int = 128
    n_nuclei: int = 12
    classes: tuple[NucleusClass, ...] = TYPED_CLASSES
    touching_fraction: float = 0.3
    noise_std: float = 6.0


def synthetic_tile(spec: SyntheticSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image uint8 HxWx3, instance_mask int32 HxW)`` for ``spec`` and ``seed``."""
    rng = np.random.default_rng(seed)
    h, w = spec.height, spec.width
    image = _stroma(rng, h, w)
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
    return _blur_and_noise(image, rng, spec.noise_std), _renumber(mask, label)


def _stroma(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``float64 HxWx3`` pink eosin stroma with fibre texture (the tile's background)."""
    fibres = ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma=(1.0, 4.0))
    return STROMA_RGB + 40.0 * fibres[..., None] * np.array([0.3, 1.0, 0.6]) + rng.normal(0, 8, size=3)


def _blur_and_noise(image: np.ndarray, rng: np.random.Generator, noise_std: float) -> np.ndarray:
    """Optical blur and sensor noise, then ``uint8``."""
    image = ndimage.gaussian_filter(image, sigma=(0.7, 0.7, 0))
    image = image + rng.normal(0, noise_std, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _renumber(mask: np.ndarray, largest: int) -> np.ndarray:
    """Labels 1..N: a nucleus drawn over completely by later ones leaves no pixel and no label."""
    present = np.unique(mask[mask > 0])
    lookup = np.zeros(largest + 1, dtype=np.int32)
    lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup[mask]


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


def _shade(
    rows: np.ndarray, cols: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], angle: float
) -> np.ndarray:
    """Normalised distance (0 at the centre, 1 at the outline) of the ellipse pixels, as skimage.draw.ellipse
    measures it."""
    dy, dx = rows - centre[0], cols - centre[1]
    sin, cos = np.sin(angle), np.cos(angle)
    squared = ((dy * cos + dx * sin) / axes[0]) ** 2 + ((dy * sin - dx * cos) / axes[1]) ** 2
    return np.sqrt(np.minimum(squared, 1.0))


def synthetic_typed_tile(spec: TypedSyntheticSpec, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(image uint8 HxWx3, instances int32 HxW, types int32 HxW)``: nuclei of ``spec.classes`` in their
    shares, each drawn with its class's size, shape and stain; ``types`` holds class index ``k`` (1-based) over each
    nucleus of ``spec.classes[k - 1]``."""
    rng = np.random.default_rng(seed)
    h, w = spec.height, spec.width
    shares = np.array([c.frequency for c in spec.classes], dtype=float)
    image, mask = _stroma(rng, h, w), np.zeros((h, w), dtype=np.int32)
    centres: list[tuple[float, float, float]] = []
    class_of = [0]
    for _ in range(spec.n_nuclei):
        index = int(rng.choice(len(spec.classes), p=shares / shares.sum()))
        kind = spec.classes[index]
        minor = rng.uniform(*kind.radius_range)
        major = minor * rng.uniform(*kind.elongation_range)
        if centres and rng.random() < spec.touching_fraction:
            cy, cx, r0 = centres[rng.integers(len(centres))]
            angle, distance = rng.uniform(0, 2 * np.pi), (r0 + minor) * rng.uniform(0.8, 1.1)
            cy, cx = cy + distance * np.sin(angle), cx + distance * np.cos(angle)
        else:
            cy, cx = rng.uniform(minor, h - minor), rng.uniform(minor, w - minor)
        rotation = rng.uniform(0, np.pi)
        rows, cols = ellipse(cy, cx, minor, major, shape=(h, w), rotation=rotation)
        if rows.size < 4:
            continue
        centres.append((cy, cx, (minor + major) / 2))
        class_of.append(index + 1)
        mask[rows, cols] = len(class_of) - 1
        shade = 1.0 - kind.rim_darkening * _shade(rows, cols, (cy, cx), (minor, major), rotation) ** 2
        stain = np.array(kind.stain_rgb) * rng.uniform(0.92, 1.08) + rng.normal(0, 6, size=3)
        image[rows, cols] = stain * shade[:, None] + rng.normal(0, 10, size=(rows.size, 1))
    instances = _renumber(mask, len(class_of) - 1)
    types = np.zeros(instances.max() + 1, dtype=np.int32)
    types[instances[mask > 0]] = np.asarray(class_of, dtype=np.int32)[mask[mask > 0]]
    return _blur_and_noise(image, rng, spec.noise_std), instances, types[instances]


def write_typed_synthetic_folder(
    out: str | Path,
    count: int,
    size: int,
    seed: int = 0,
    overwrite: bool = False,
    spec: TypedSyntheticSpec | None = None,
) -> Path:
    """``count`` typed synthetic tiles of ``size`` px as a typed folder (``typed-folder``: images/, instances/,
    types/, classes.json with the class names and colours of ``spec``), to train a typed model without a download."""
    from nucleiseg.data.typed.folder import write_typed_folder
    from nucleiseg.util.errors import ConfigError

    if count < 1 or size < 32:
        raise ConfigError(f"data synthetic --typed: --count must be >= 1 and --size >= 32 (got {count}, {size})")
    spec = spec or TypedSyntheticSpec(size, size, n_nuclei=max(1, round(12 * size * size / 128**2)))
    tiles = ((f"synthetic_{k:02d}", *synthetic_typed_tile(spec, seed * 1_000_003 + k)) for k in range(count))
    classes = tuple(c.name for c in spec.classes)
    colours = {c.name: list(c.colour) for c in spec.classes}
    return write_typed_folder(out, tiles, classes, None, "synthetic", colours, overwrite=overwrite)
