"""Reader for Lizard (Graham et al., ICCV Workshops 2021): colon tissue regions at 20x (about 0.5 um/px) with
nearly half a million labelled nuclei.

Layout (the release's README.txt and read_label.py; torch_em's ``histopathology/lizard.py``):
  ROOT/Lizard_Images1/NAME.png, ROOT/Lizard_Images2/NAME.png     the image regions, split over two zips
  ROOT/Lizard_Labels/Labels/NAME.mat    ``inst_map`` (HxW), ``id`` (Nx1 instance ids), ``class`` (Nx1, the class of
                                        the nucleus ``id[k]``), ``bbox`` (Nx4), ``centroid`` (Nx2)
  ROOT/Lizard_Labels/info.csv           Filename, Source, Split (the release's 3 folds), optional here
The classes are numbered 1 neutrophil, 2 epithelial, 3 lymphocyte, 4 plasma, 5 eosinophil, 6 connective tissue (the
README lists class 5 as "Neutrophil" by mistake; the Lizard paper and the CoNIC notebook name it eosinophil).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from nucleiseg.data.image_io import read_rgb
from nucleiseg.data.source import SourceImage
from nucleiseg.data.typed.common import find_folders, integer_labels, load_mat, relabel_with_classes
from nucleiseg.util.errors import DatasetLayoutError, ImageReadError

LIZARD_CLASSES = ("neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective")
LIZARD_MPP = 0.5  # 20x objective (README: "colon whole-slide images at 20x objective magnification")
TISSUE = "colon"
EXPECTED_LAYOUT = """expected the Lizard release (lizard_images1.zip, lizard_images2.zip, lizard_labels.zip unpacked):
  ROOT/Lizard_Images1/NAME.png, ROOT/Lizard_Images2/NAME.png
  ROOT/Lizard_Labels/Labels/NAME.mat (inst_map, id, class) and ROOT/Lizard_Labels/info.csv"""


def _read_info(labels_root: Path) -> dict[str, dict[str, str]]:
    """``{Filename: {"source": ..., "split": ...}}`` from ``info.csv`` (empty without one)."""
    info = labels_root / "info.csv"
    if not info.is_file():
        return {}
    with info.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"Filename", "Source", "Split"} <= set(rows[0]):
        raise DatasetLayoutError(f"{info}: columns {sorted(rows[0])}; expected Filename, Source, Split")
    return {row["Filename"]: {"source": row["Source"], "split": row["Split"], "tissue": TISSUE} for row in rows}


def find_lizard(root: str | Path) -> list[SourceImage]:
    """The Lizard image regions under ``root``, each with its ``.mat`` labels. Patient ids are not published: each
    region is its own ``patient``; ``metadata`` holds its ``source`` dataset and release ``split`` (info.csv)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: Lizard root folder not found; {EXPECTED_LAYOUT}")
    image_dirs = find_folders(root, lambda p: p.name.lower().startswith("lizard_images"))
    label_roots = find_folders(root, lambda p: p.name.lower() == "lizard_labels" and (p / "Labels").is_dir())
    if not image_dirs or len(label_roots) != 1:
        what = "no Lizard_Images* folder" if not image_dirs else f"{len(label_roots)} Lizard_Labels/Labels folders"
        raise DatasetLayoutError(f"{root}: {what} found; {EXPECTED_LAYOUT}")
    labels, info = label_roots[0] / "Labels", _read_info(label_roots[0])
    sources = []
    for image_path in sorted((p for d in image_dirs for p in d.iterdir() if p.suffix == ".png"), key=lambda p: p.name):
        label_path = labels / f"{image_path.stem}.mat"
        if not label_path.is_file():
            raise DatasetLayoutError(f"{image_path}: no labels {label_path}; {EXPECTED_LAYOUT}")
        metadata = info.get(image_path.stem, {"tissue": TISSUE})
        sources.append(
            SourceImage(
                "lizard",
                image_path.stem,
                image_path.stem,
                image_path,
                label_path,
                read_rgb,
                _load_instances,
                LIZARD_MPP,
                LIZARD_CLASSES,
                lizard_labels,
                metadata,
            )
        )
    if not sources:
        raise DatasetLayoutError(f"{root}: the Lizard_Images folders hold no .png image; {EXPECTED_LAYOUT}")
    return sources


def lizard_labels(path: Path, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(instances int32 HxW, types int32 HxW)`` of one Lizard ``.mat``: nucleus ``id[k]`` has class ``class[k]``
    (read_label.py of the release). The id key is ``id`` (``nuclei_id`` in some conversions)."""
    arrays = load_mat(path, ("inst_map", "class"), EXPECTED_LAYOUT, optional=("id", "nuclei_id"))
    ids = arrays.get("id", arrays.get("nuclei_id"))
    if ids is None:
        raise DatasetLayoutError(f"{path}: no id (or nuclei_id) array in the .mat file; {EXPECTED_LAYOUT}")
    instances = integer_labels(arrays["inst_map"], path, "inst_map")
    ids = integer_labels(ids.ravel(), path, "id")
    classes = integer_labels(arrays["class"].ravel(), path, "class")
    if ids.size != classes.size:
        raise ImageReadError(f"{path}: {ids.size} ids but {classes.size} classes; expected one class per nucleus id")
    class_of = dict(zip(ids.tolist(), classes.tolist(), strict=True))
    present = np.unique(instances[instances > 0]).tolist()
    lacking = [label for label in present if label not in class_of]
    if lacking:
        raise ImageReadError(f"{path}: {len(lacking)} nuclei of inst_map (e.g. {lacking[0]}) have no id/class entry")
    bad = sorted({class_of[label] for label in present} - set(range(1, len(LIZARD_CLASSES) + 1)))
    if bad:
        raise ImageReadError(f"{path}: classes {bad}; expected 1..{len(LIZARD_CLASSES)} ({', '.join(LIZARD_CLASSES)})")
    return relabel_with_classes(instances, class_of)


def _load_instances(path: Path, shape: tuple[int, int]) -> np.ndarray:
    return lizard_labels(path)[0]
