"""Writers of tiny datasets in the released formats of the typed datasets, with the answers the readers must give.

Each format was checked against the dataset's own description: PanNuke's README in the fold zips and torch_em's
histopathology/pannuke.py; CoNSeP's README.txt (inst_map, type_map, inst_type, inst_centroid) and HoVer-Net's
dataset.py; Lizard's README.txt and read_label.py (inst_map, id, class, bbox, centroid; info.csv); CoNIC's
notebooks/data.ipynb (images.npy, labels.npy, counts.csv, patch_info.csv); MoNuSAC's n-ary_mask_generation.ipynb
(Annotation > Attributes/Attribute@Name, Regions/Region/Vertices/Vertex@X,Y).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy.io import savemat


def square(mask: np.ndarray, top: int, left: int, side: int, value: float) -> None:
    mask[top : top + side, left : left + side] = value


# ---------------------------------------------------------------- PanNuke
# per fold, per patch: [(channel, id, top, left, side)]; ids repeat across channels on purpose (they are per channel)
PANNUKE_NUCLEI = {
    1: [[(0, 1, 10, 10, 8), (0, 2, 30, 30, 6), (1, 5, 60, 60, 5), (4, 1, 100, 100, 9)], [(2, 3, 5, 5, 7)]],
    2: [[(3, 1, 20, 20, 4), (3, 2, 40, 40, 4)], []],
    3: [[(1, 1, 0, 0, 6), (4, 7, 200, 200, 10), (4, 8, 220, 220, 10)]],
}
TISSUES = ["Breast", "Colon"]


def write_pannuke(root: Path, folds: dict = PANNUKE_NUCLEI, size: int = 256) -> None:
    """``Fold N/images/foldN/images.npy`` (n,256,256,3) float64 0..255, ``types.npy`` (n,) str, ``Fold
    N/masks/foldN/masks.npy`` (n,256,256,6) float64 (channels 0-4 instance ids, 5 background)."""
    for fold, patches in folds.items():
        images = np.zeros((len(patches), size, size, 3), dtype=np.float64)
        masks = np.zeros((len(patches), size, size, 6), dtype=np.float64)
        for index, nuclei in enumerate(patches):
            images[index] = [230.0, 180.0, 210.0]
            for channel, nucleus_id, top, left, side in nuclei:
                square(masks[index, ..., channel], top, left, side, nucleus_id)
                images[index, top : top + side, left : left + side] = [90.0, 60.0, 140.0]
            masks[index, ..., 5] = (masks[index, ..., :5].sum(axis=-1) == 0).astype(np.float64)
        image_dir = root / f"Fold {fold}" / "images" / f"fold{fold}"
        mask_dir = root / f"Fold {fold}" / "masks" / f"fold{fold}"
        image_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        np.save(image_dir / "images.npy", images)
        np.save(image_dir / "types.npy", np.array([TISSUES[i % 2] for i in range(len(patches))]))
        np.save(mask_dir / "masks.npy", masks)


def pannuke_expected_classes(fold: int, index: int) -> list[int]:
    """Class index (1-based) of each instance, in the reader's label order (channel, then id)."""
    nuclei = sorted(PANNUKE_NUCLEI[fold][index], key=lambda n: (n[0], n[1]))
    return [channel + 1 for channel, *_ in nuclei]


# ---------------------------------------------------------------- CoNSeP
def write_consep(root: Path, size: int = 64) -> dict[str, list[int]]:
    """``Train|Test/Images/*.png`` + ``Labels/*.mat``; one nucleus of each of the 7 original types in train_1.
    Returns the merged class (1-based) of each instance, per image, in label order."""
    expected = {}
    for split, name, types in (("Train", "train_1", [1, 2, 3, 4, 5, 6, 7]), ("Test", "test_1", [4, 2])):
        (root / split / "Images").mkdir(parents=True)
        (root / split / "Labels").mkdir(parents=True)
        inst_map = np.zeros((size, size), dtype=np.float64)  # the release stores MATLAB doubles
        type_map = np.zeros((size, size), dtype=np.float64)
        for k, original in enumerate(types, start=1):
            square(inst_map, 2 + 8 * (k - 1), 4, 6, k)
            square(type_map, 2 + 8 * (k - 1), 4, 6, original)
        centroids = [[7.0, 5.0 + 8 * k] for k in range(len(types))]
        savemat(
            root / split / "Labels" / f"{name}.mat",
            {
                "inst_map": inst_map,
                "type_map": type_map,
                "inst_type": np.array(types, dtype=np.float64)[:, None],
                "inst_centroid": np.array(centroids),
            },
        )
        Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(root / split / "Images" / f"{name}.png")
        expected[name] = [{1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4, 7: 4}[t] for t in types]
    return expected


# ---------------------------------------------------------------- Lizard
LIZARD_IMAGES = {  # name: [(id, class, top, left, side)]; ids need not be 1..N
    "consep_1": [(3, 1, 2, 2, 5), (7, 2, 10, 10, 6), (9, 6, 30, 30, 4)],
    "crag_2": [(1, 3, 0, 0, 4), (2, 4, 20, 20, 4), (4, 5, 40, 5, 3)],
}


def write_lizard(root: Path, size: int = 48) -> None:
    """``Lizard_Images1|2/NAME.png``, ``Lizard_Labels/Labels/NAME.mat`` (inst_map, id, class, bbox, centroid as
    Nx1/Nx4/Nx2 arrays), ``Lizard_Labels/info.csv`` (Filename, Source, Split)."""
    labels = root / "Lizard_Labels" / "Labels"
    labels.mkdir(parents=True)
    for k, (name, nuclei) in enumerate(LIZARD_IMAGES.items(), start=1):
        images = root / f"Lizard_Images{k}"
        images.mkdir()
        Image.fromarray(np.full((size, size, 3), 210, np.uint8)).save(images / f"{name}.png")
        inst_map = np.zeros((size, size), dtype=np.int32)
        for nucleus_id, _, top, left, side in nuclei:
            square(inst_map, top, left, side, nucleus_id)
        savemat(
            labels / f"{name}.mat",
            {
                "inst_map": inst_map,
                "id": np.array([[n[0]] for n in nuclei], dtype=np.int32),
                "class": np.array([[n[1]] for n in nuclei], dtype=np.int32),
                "bbox": np.array([[n[2], n[2] + n[4], n[3], n[3] + n[4]] for n in nuclei], dtype=np.int32),
                "centroid": np.array([[n[3] + n[4] / 2, n[2] + n[4] / 2] for n in nuclei]),
            },
        )
    with (root / "Lizard_Labels" / "info.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Filename", "Source", "Split"])
        writer.writerows([["consep_1", "consep", "1"], ["crag_2", "crag", "2"]])


# ---------------------------------------------------------------- CoNIC
CONIC_PATCHES = [  # patch_info, [(instance id, class, top, left, side)]
    ("consep_1-0000", [(1, 2, 10, 10, 6), (2, 3, 40, 40, 5)]),
    ("consep_1-0001", [(1, 6, 100, 100, 8)]),
    ("crag_2-0000", [(4, 1, 0, 0, 4), (5, 5, 250, 250, 6), (6, 4, 128, 128, 7)]),
]


def write_conic(root: Path) -> None:
    """``images.npy`` (N,256,256,3) uint8, ``labels.npy`` (N,256,256,2) instance + class, ``patch_info.csv``,
    ``counts.csv``."""
    root.mkdir(parents=True, exist_ok=True)
    images = np.full((len(CONIC_PATCHES), 256, 256, 3), 205, dtype=np.uint8)
    labels = np.zeros((len(CONIC_PATCHES), 256, 256, 2), dtype=np.int32)
    for index, (_, nuclei) in enumerate(CONIC_PATCHES):
        for nucleus_id, klass, top, left, side in nuclei:
            square(labels[index, ..., 0], top, left, side, nucleus_id)
            square(labels[index, ..., 1], top, left, side, klass)
    np.save(root / "images.npy", images)
    np.save(root / "labels.npy", labels)
    with (root / "patch_info.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["patch_info"], *[[name] for name, _ in CONIC_PATCHES]])
    names = ["neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective"]
    with (root / "counts.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for _, nuclei in CONIC_PATCHES:
            writer.writerow([sum(n[1] == k for n in nuclei) for k in range(1, 7)])


# ---------------------------------------------------------------- MoNuSAC
def monusac_xml(classified: list[tuple[str, list[np.ndarray]]]) -> str:
    """ImageScope XML as MoNuSAC ships it: one Annotation per class, its name in Attributes/Attribute@Name."""
    parts = []
    for number, (name, polygons) in enumerate(classified, start=1):
        regions = "".join(
            f'<Region Id="{k}" Type="0"><Attributes/><Vertices>'
            + "".join(f'<Vertex X="{x:.1f}" Y="{y:.1f}" Z="0"/>' for x, y in polygon)
            + "</Vertices></Region>"
            for k, polygon in enumerate(polygons, start=1)
        )
        parts.append(
            f'<Annotation Id="{number}" Name="" ReadOnly="0"><Attributes><Attribute Name="{name}" Id="0" Value=""/>'
            f"</Attributes><Regions><RegionAttributeHeaders/>{regions}</Regions><Plots/></Annotation>"
        )
    return '<?xml version="1.0"?><Annotations MicronsPerPixel="0.252100">' + "".join(parts) + "</Annotations>"


def box(x: float, y: float, side: float) -> np.ndarray:
    return np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]])


MONUSAC_IMAGES = {  # (release folder, patient folder, name, suffix): annotations
    ("MoNuSAC_images_and_annotations", "TCGA-55-1594-01Z-00-DX1", "TCGA-55-1594-01Z-00-DX1_1", ".tif"): [
        ("Epithelial", [box(2, 2, 8), box(20, 2, 8)]),
        ("Lymphocyte", [box(2, 20, 5)]),
        ("Macrophage", [box(30, 30, 6)]),
    ],
    ("MoNuSAC_images_and_annotations", "TCGA-55-1594-01Z-00-DX1", "TCGA-55-1594-01Z-00-DX1_2", ".svs"): [
        ("Neutrophil", [box(5, 5, 6)]),
    ],
    ("MoNuSAC Testing Data and Annotations", "TCGA-2Z-A9JG-01Z-00-DX1", "TCGA-2Z-A9JG-01Z-00-DX1_1", ".tif"): [
        ("Lymphocyte", [box(4, 4, 5), box(14, 4, 5)]),
        ("Ambiguous", [box(25, 25, 12)]),
    ],
}


def write_monusac(root: Path, size: int = 48) -> None:
    """Patient folders of ``NAME.tif`` (RGBA, as the release's .tif copies are) or ``NAME.svs`` + ``NAME.xml``."""
    for (release, patient, name, suffix), classified in MONUSAC_IMAGES.items():
        folder = root / release / patient
        folder.mkdir(parents=True, exist_ok=True)
        channels = 4 if suffix == ".tif" else 3
        tifffile.imwrite(folder / f"{name}{suffix}", np.full((size, size, channels), 200, np.uint8))
        (folder / f"{name}.xml").write_text(monusac_xml(classified))
