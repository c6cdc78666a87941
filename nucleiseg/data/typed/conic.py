"""Reader for the CoNIC challenge data (Graham et al., Medical Image Analysis 2024): Lizard cut into 256x256 patches
at 20x (about 0.5 um/px), colon tissue.

Layout (TissueImageAnalytics/CoNIC, notebooks/data.ipynb):
  ROOT/images.npy       (N, 256, 256, 3) uint8 RGB
  ROOT/labels.npy       (N, 256, 256, 2): channel 0 instance map, channel 1 class map (0 background, 1 neutrophil,
                        2 epithelial, 3 lymphocyte, 4 plasma, 5 eosinophil, 6 connective)
  ROOT/patch_info.csv   one row per patch: the Lizard image it was cut from (``NAME-KKKK``)
  ROOT/counts.csv       nuclei per class in each patch's central 224x224 (not needed to read the labels)
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from nucleiseg.data.archive import find_layout_root
from nucleiseg.data.source import SourceImage
from nucleiseg.data.typed.common import integer_labels, majority_class, memory_mapped, relabel_with_classes
from nucleiseg.data.typed.lizard import LIZARD_CLASSES, LIZARD_MPP, TISSUE
from nucleiseg.util.errors import DatasetLayoutError, ImageReadError

EXPECTED_LAYOUT = """expected the CoNIC challenge data:
  ROOT/images.npy (N,256,256,3) uint8, ROOT/labels.npy (N,256,256,2) instance + class, ROOT/patch_info.csv"""


def _patch_names(path: Path, count: int) -> list[str]:
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: patch_info.csv missing (it says which Lizard image each patch is from)")
    with path.open(newline="") as handle:
        rows = [row[0].strip() for row in csv.reader(handle) if row]
    names = rows[1:]  # the first row is the header
    if len(names) != count:
        raise DatasetLayoutError(f"{path}: {len(names)} rows for {count} patches in images.npy; expected one per patch")
    return names


def find_conic(root: str | Path) -> list[SourceImage]:
    """The CoNIC patches under ``root``; the Lizard image a patch comes from is its ``patient``, so that splits keep
    the patches of one image together (as HoVer-Net's CoNIC split does)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: CoNIC root folder not found; {EXPECTED_LAYOUT}")
    found = find_layout_root(root, lambda p: (p / "images.npy").is_file() and (p / "labels.npy").is_file())
    if found is None:
        raise DatasetLayoutError(f"{root}: no images.npy beside labels.npy found; {EXPECTED_LAYOUT}")
    images, labels = memory_mapped(str(found / "images.npy")), memory_mapped(str(found / "labels.npy"))
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DatasetLayoutError(f"{found / 'images.npy'}: {images.dtype} {images.shape}; expected (N, H, W, 3) uint8")
    if labels.shape != (*images.shape[:3], 2):
        raise DatasetLayoutError(f"{found / 'labels.npy'}: shape {labels.shape}; expected {(*images.shape[:3], 2)}")
    names = _patch_names(found / "patch_info.csv", images.shape[0])
    unique = len(set(names)) == len(names)
    return [
        SourceImage(
            "conic",
            name if unique else f"{name}#{index}",
            name.split("-")[0],
            found / "images.npy",
            found / "labels.npy",
            partial(_load_patch, index=index),
            partial(_load_instances, index=index),
            LIZARD_MPP,
            LIZARD_CLASSES,
            partial(_load_typed, index=index),
            {"tissue": TISSUE, "lizard_image": name.split("-")[0]},
        )
        for index, name in enumerate(names)
    ]


def _load_patch(path: Path, index: int) -> np.ndarray:
    return np.ascontiguousarray(memory_mapped(str(path))[index])


def _load_typed(path: Path, shape: tuple[int, int], index: int) -> tuple[np.ndarray, np.ndarray]:
    """Instances and classes of patch ``index``; a nucleus takes the class most of its pixels have."""
    label = np.asarray(memory_mapped(str(path))[index])
    where = f"{path} patch {index}"
    instances = integer_labels(label[..., 0], where, "instance channel")
    classes = integer_labels(label[..., 1], where, "class channel")
    if classes.max(initial=0) > len(LIZARD_CLASSES):
        raise ImageReadError(f"{where}: class {classes.max()}; expected 0..{len(LIZARD_CLASSES)}")
    return relabel_with_classes(instances, majority_class(instances, classes))


def _load_instances(path: Path, shape: tuple[int, int], index: int) -> np.ndarray:
    return _load_typed(path, shape, index)[0]
