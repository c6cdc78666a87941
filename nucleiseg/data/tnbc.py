"""Reader for the TNBC nuclei dataset (Naylor et al., IEEE TMI 2018; Zenodo record 1175282).

Published layout: ``Slide_XX/*.png`` images with binary masks of the same name in ``GT_XX/``; the slide
number is the patient. The folder may sit one or two levels down (``TNBC_NucleiSegmentation/``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nucleiseg.data.archive import find_layout_root
from nucleiseg.data.image_io import IMAGE_SUFFIXES, read_mask, read_rgb
from nucleiseg.data.source import SourceImage
from nucleiseg.util.errors import DatasetLayoutError

SLIDE_PATTERN = re.compile(r"^Slide_(\d+)$")
EXPECTED_LAYOUT = """expected the TNBC layout (Zenodo record 1175282):
  ROOT/Slide_01/01_1.png ...   H&E images, one folder per slide (patient)
  ROOT/GT_01/01_1.png ...      binary masks with the same file names"""


def _has_slides(folder: Path) -> bool:
    return any(SLIDE_PATTERN.match(p.name) and p.is_dir() for p in folder.iterdir())


def _load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    return read_mask(path)


def find_tnbc(root: str | Path) -> list[SourceImage]:
    """List the TNBC images under ``root`` (a folder), each paired with its GT mask, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: TNBC root folder not found; {EXPECTED_LAYOUT}")
    found = find_layout_root(root, _has_slides)
    if found is None:
        raise DatasetLayoutError(f"{root}: no Slide_XX folder found; {EXPECTED_LAYOUT}")
    sources = []
    for slide_dir in sorted(p for p in found.iterdir() if SLIDE_PATTERN.match(p.name) and p.is_dir()):
        slide = SLIDE_PATTERN.match(slide_dir.name).group(1)
        gt_dir = found / f"GT_{slide}"
        if not gt_dir.is_dir():
            raise DatasetLayoutError(
                f"{slide_dir}: slide folder without its mask folder {gt_dir.name}; {EXPECTED_LAYOUT}"
            )
        images = sorted(p for p in slide_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetLayoutError(f"{slide_dir}: slide folder holds no image; {EXPECTED_LAYOUT}")
        for image_path in images:
            mask_path = gt_dir / image_path.name
            if not mask_path.is_file():
                raise DatasetLayoutError(f"{image_path}: no mask {mask_path} for this image; {EXPECTED_LAYOUT}")
            sources.append(
                SourceImage("tnbc", image_path.stem, f"slide{slide}", image_path, mask_path, read_rgb, _load_mask)
            )
    return sources
