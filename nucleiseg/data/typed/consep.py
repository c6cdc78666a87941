"""Reader for CoNSeP (Graham et al., "HoVer-Net", Medical Image Analysis 2019): 41 colorectal adenocarcinoma tiles
of 1000x1000 px at 40x, from 16 patients.

Layout (the README.txt inside the release): ``Train|Test/Images/NAME.png`` and ``Train|Test/Labels/NAME.mat`` with
``inst_map`` (HxW, 0..N), ``type_map`` (HxW, 0..7), ``inst_type`` (Nx1, the type of each instance in order of its
``inst_map`` id) and ``inst_centroid`` (Nx2). The 7 types are 1 other, 2 inflammatory, 3 healthy epithelial,
4 dysplastic/malignant epithelial, 5 fibroblast, 6 muscle, 7 endothelial; like HoVer-Net they are merged into 4
classes (vqdang/hover_net dataset.py, ``__CoNSeP.load_ann``: 3 & 4 -> 3, 5 & 6 & 7 -> 4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nucleiseg.data.archive import find_layout_root
from nucleiseg.data.image_io import read_rgb
from nucleiseg.data.source import SourceImage
from nucleiseg.data.typed.common import integer_labels, load_mat, majority_class, relabel_with_classes
from nucleiseg.util.errors import DatasetLayoutError, ImageReadError

CONSEP_CLASSES = ("other", "inflammatory", "epithelial", "spindle-shaped")
# original CoNSeP type -> merged class (HoVer-Net's merge; 0 stays background)
CONSEP_MERGE = {1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4, 7: 4}
CONSEP_MPP = 0.25  # 40x (HoVer-Net paper, section 4.1)
SPLITS = ("Train", "Test")
EXPECTED_LAYOUT = """expected the CoNSeP release:
  ROOT/Train/Images/train_1.png ... + ROOT/Train/Labels/train_1.mat ... (inst_map, type_map, inst_type)
  ROOT/Test/Images/test_1.png ...   + ROOT/Test/Labels/test_1.mat ..."""


def _has_splits(folder: Path) -> bool:
    return any((folder / split / "Images").is_dir() for split in SPLITS)


def find_consep(root: str | Path) -> list[SourceImage]:
    """The CoNSeP tiles under ``root`` (``Train`` and ``Test`` as found), each with its ``.mat`` labels; the
    release's split is ``metadata["split"]``. The tile -> patient mapping is not published, so each tile is its own
    ``patient``: keep the release's Train/Test split to keep patients apart."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: CoNSeP root folder not found; {EXPECTED_LAYOUT}")
    found = find_layout_root(root, _has_splits)
    if found is None:
        raise DatasetLayoutError(f"{root}: no Train/Images or Test/Images folder found; {EXPECTED_LAYOUT}")
    sources = []
    for split in SPLITS:
        image_dir, label_dir = found / split / "Images", found / split / "Labels"
        if not image_dir.is_dir():
            continue
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() == ".png")
        if not images:
            raise DatasetLayoutError(f"{image_dir}: no .png image; {EXPECTED_LAYOUT}")
        for image_path in images:
            label_path = label_dir / f"{image_path.stem}.mat"
            if not label_path.is_file():
                raise DatasetLayoutError(f"{image_path}: no labels {label_path}; {EXPECTED_LAYOUT}")
            sources.append(
                SourceImage(
                    "consep",
                    image_path.stem,
                    image_path.stem,
                    image_path,
                    label_path,
                    read_rgb,
                    _load_instances,
                    CONSEP_MPP,
                    CONSEP_CLASSES,
                    consep_labels,
                    {"split": split.lower()},
                )
            )
    return sources


def consep_labels(path: Path, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(instances int32 HxW, types int32 HxW)`` of one CoNSeP ``.mat``, types merged to :data:`CONSEP_CLASSES`.

    Each nucleus takes its type from ``inst_type`` (one per ``inst_map`` id, as the README defines it); where
    ``inst_type`` does not have one entry per id, from the most frequent ``type_map`` value over the nucleus."""
    arrays = load_mat(path, ("inst_map", "type_map"), EXPECTED_LAYOUT, optional=("inst_type",))
    instances = integer_labels(arrays["inst_map"], path, "inst_map")
    type_map = integer_labels(arrays["type_map"], path, "type_map")
    if instances.shape != type_map.shape or instances.ndim != 2:
        raise ImageReadError(f"{path}: inst_map {instances.shape} and type_map {type_map.shape}; expected one HxW size")
    labels = np.unique(instances[instances > 0])
    inst_type = integer_labels(arrays["inst_type"].ravel(), path, "inst_type") if "inst_type" in arrays else None
    if inst_type is not None and labels.size and inst_type.size >= labels.max():
        original = {int(label): int(inst_type[label - 1]) for label in labels}
    else:
        original = majority_class(instances, type_map)
    unknown = sorted({t for t in original.values() if t not in CONSEP_MERGE})
    if unknown:
        raise ImageReadError(f"{path}: nucleus types {unknown}; expected CoNSeP types 1..7")
    return relabel_with_classes(instances, {label: CONSEP_MERGE[t] for label, t in original.items()})


def _load_instances(path: Path, shape: tuple[int, int]) -> np.ndarray:
    return consep_labels(path)[0]
