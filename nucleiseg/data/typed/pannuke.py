"""Reader for PanNuke (Gamper et al., ECDP 2019; arXiv 2003.10778), the three folds as the TIA Centre released them.

Layout of each ``fold_N.zip`` (the README inside the zips; torch_em's ``histopathology/pannuke.py``):
  Fold N/images/foldN/images.npy   (n, 256, 256, 3) float64, RGB values 0..255
  Fold N/images/foldN/types.npy    (n,) the tissue type of each patch ("Breast", "Colon", ...)
  Fold N/masks/foldN/masks.npy     (n, 256, 256, 6) float64: channels 0-4 hold the instance ids of Neoplastic,
                                   Inflammatory, Connective/Soft tissue, Dead and Epithelial nuclei; 5 is background
40x, about 0.25 um/px. The arrays are GBs: they are memory-mapped, and a patch is read when it is loaded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from nucleiseg.data.source import SourceImage
from nucleiseg.data.typed.common import integer_labels, memory_mapped, relabel_with_classes
from nucleiseg.util.errors import DatasetLayoutError, ImageReadError

PANNUKE_CLASSES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")  # masks.npy channels 0..4
PANNUKE_MPP = 0.25  # 40x scans (PanNuke paper, section III)
# The folds' protocol: train on one fold, select on another, test on the third, in three rotations (PanNuke
# paper; CellViT's configs/PanNuke/official_split/*/fold_{1,2,3}.yaml hold the same, 0-based).
PANNUKE_FOLD_PROTOCOL = (
    {"train": 1, "val": 2, "test": 3},
    {"train": 2, "val": 1, "test": 3},
    {"train": 3, "val": 2, "test": 1},
)
EXPECTED_LAYOUT = """expected the PanNuke release (fold_1.zip .. fold_3.zip unpacked):
  ROOT/Fold N/images/foldN/images.npy (n,256,256,3) + types.npy (n,)
  ROOT/Fold N/masks/foldN/masks.npy (n,256,256,6)"""
log = logging.getLogger(__name__)
FOLD_DIR = re.compile(r"^fold[ _]?(\d)$", re.IGNORECASE)


def _fold_files(root: Path) -> dict[int, tuple[Path, Path, Path]]:
    """``{fold: (images.npy, masks.npy, types.npy)}`` of the folds found under ``root``."""
    folds = {}
    for images in sorted(root.rglob("images.npy")):
        match = FOLD_DIR.match(images.parent.name)
        if not match or images.parent.parent.name.lower() != "images":
            continue
        fold = int(match.group(1))
        masks = images.parents[2] / "masks" / images.parent.name / "masks.npy"
        if not masks.is_file():
            raise DatasetLayoutError(f"{images}: its masks {masks} are missing; {EXPECTED_LAYOUT}")
        if fold in folds:
            raise DatasetLayoutError(f"{root}: fold {fold} found twice ({folds[fold][0]} and {images})")
        folds[fold] = (images, masks, images.with_name("types.npy"))
    return folds


def _tissues(path: Path, count: int) -> np.ndarray:
    """The tissue type of each patch (``types.npy``). An array stored as pickled Python objects is not unpickled
    (loading a pickle runs code from the file): the tissue is then left empty, with a warning; labels are unaffected."""
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: tissue types missing; {EXPECTED_LAYOUT}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError:
        log.warning("%s: tissue types stored as pickled objects, not loaded (unsafe); tissue left empty", path)
        return np.array([""] * count)


def _check_fold(images: np.ndarray, masks: np.ndarray, tissues: np.ndarray, paths: tuple[Path, Path, Path]) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetLayoutError(f"{paths[0]}: array of shape {images.shape}; expected (n, H, W, 3) RGB patches")
    if masks.shape != (*images.shape[:3], 6):
        raise DatasetLayoutError(
            f"{paths[1]}: array of shape {masks.shape}; expected {(*images.shape[:3], 6)} (5 classes + background)"
        )
    if tissues.shape != images.shape[:1]:
        raise DatasetLayoutError(f"{paths[2]}: {tissues.shape[0]} tissue types for {images.shape[0]} patches")


def find_pannuke(root: str | Path, folds: Iterable[int] | None = None) -> list[SourceImage]:
    """The PanNuke patches under ``root`` (all folds found, or ``folds``), named ``foldN_KKKK``; the fold is the
    ``patient`` (PanNuke publishes no patient ids; its folds are its split) and ``metadata["fold"]``, the tissue
    type ``metadata["tissue"]``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: PanNuke root folder not found; {EXPECTED_LAYOUT}")
    found = _fold_files(root)
    wanted = sorted(found) if folds is None else sorted(set(folds))
    missing = [fold for fold in wanted if fold not in found]
    if not found:
        raise DatasetLayoutError(f"{root}: no PanNuke fold found; {EXPECTED_LAYOUT}")
    if missing:
        raise DatasetLayoutError(f"{root}: fold(s) {missing} not found (found {sorted(found)}); {EXPECTED_LAYOUT}")
    sources = []
    for fold in wanted:
        images_path, masks_path, types_path = found[fold]
        tissues = _tissues(types_path, memory_mapped(str(images_path)).shape[0])
        _check_fold(memory_mapped(str(images_path)), memory_mapped(str(masks_path)), tissues, found[fold])
        for index, tissue in enumerate(tissues.tolist()):
            sources.append(
                SourceImage(
                    "pannuke",
                    f"fold{fold}_{index:04d}",
                    f"fold{fold}",
                    images_path,
                    masks_path,
                    partial(_load_patch, index=index),
                    partial(_load_instances, index=index),
                    PANNUKE_MPP,
                    PANNUKE_CLASSES,
                    partial(_load_typed, index=index),
                    {"fold": str(fold), "tissue": str(tissue)},
                )
            )
    return sources


def _load_patch(path: Path, index: int) -> np.ndarray:
    patch = np.asarray(memory_mapped(str(path))[index], dtype=np.float64)
    if patch.size and (patch.min() < 0 or patch.max() > 255.5):
        raise ImageReadError(f"{path}: patch {index} has values {patch.min()}..{patch.max()}; expected 0..255")
    return np.clip(np.round(patch), 0, 255).astype(np.uint8)


def _load_typed(path: Path, shape: tuple[int, int], index: int) -> tuple[np.ndarray, np.ndarray]:
    return pannuke_labels(np.asarray(memory_mapped(str(path))[index]), f"{path} patch {index}")


def _load_instances(path: Path, shape: tuple[int, int], index: int) -> np.ndarray:
    return _load_typed(path, shape, index)[0]


def pannuke_labels(mask: np.ndarray, where: str = "masks.npy") -> tuple[np.ndarray, np.ndarray]:
    """``(instances int32 HxW, types int32 HxW)`` of one ``HxWx6`` PanNuke mask: the instance ids of channels 0-4
    become one label map (ids are per channel, so each channel's ids are offset past the previous ones) and the
    channel is the class. Where channels overlap the later channel wins, as torch_em's ``_channels_to_instances``."""
    channels = integer_labels(mask[..., : len(PANNUKE_CLASSES)], where, "masks.npy")
    combined = np.zeros(channels.shape[:2], dtype=np.int64)
    class_of, offset = {}, 0
    for channel in range(len(PANNUKE_CLASSES)):
        ids = channels[..., channel]
        inside = ids > 0
        present = np.unique(ids[inside])
        combined[inside] = offset + 1 + np.searchsorted(present, ids[inside])
        class_of.update({offset + 1 + k: channel + 1 for k in range(present.size)})
        offset += present.size
    return relabel_with_classes(combined, class_of)


def pannuke_protocol_split(sources: Sequence[SourceImage], rotation: int) -> dict[str, list[SourceImage]]:
    """``{"train": [...], "val": [...], "test": [...]}``: the patches of each fold as rotation ``rotation``
    (0, 1 or 2) of :data:`PANNUKE_FOLD_PROTOCOL` assigns them."""
    if rotation not in range(len(PANNUKE_FOLD_PROTOCOL)):
        raise ValueError(f"PanNuke protocol rotation {rotation}; expected 0, 1 or 2 (PANNUKE_FOLD_PROTOCOL)")
    folds = PANNUKE_FOLD_PROTOCOL[rotation]
    return {split: [s for s in sources if s.metadata.get("fold") == str(fold)] for split, fold in folds.items()}
