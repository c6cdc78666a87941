"""Reader for MoNuSeg 2018 (Kumar et al., IEEE TMI 2017/2019).

Layouts accepted (folder names with spaces or underscores):
- training release: ``ROOT/Tissue Images/*.tif`` + ``ROOT/Annotations/*.xml``;
- test release: ``*.tif`` and ``*.xml`` side by side in one folder;
- a mirror that ships binary or instance mask PNGs: pass ``mask_dir`` (files named like the images, any of
  .png/.tif); the XML is preferred where both exist, since only it separates touching nuclei.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nucleiseg.data.aperio_xml import rasterise_regions, read_regions
from nucleiseg.data.archive import find_layout_root
from nucleiseg.data.image_io import IMAGE_SUFFIXES, read_mask, read_rgb
from nucleiseg.data.source import SourceImage
from nucleiseg.util.errors import AnnotationError, DatasetLayoutError

EXPECTED_LAYOUT = """expected a MoNuSeg 2018 layout:
  ROOT/Tissue Images/TCGA-*.tif + ROOT/Annotations/TCGA-*.xml   (training release; '_' for spaces also accepted)
  ROOT/TCGA-*.tif + ROOT/TCGA-*.xml                              (test release)
  and, for images without XML, --mask-dir / data.sources.monuseg.mask_dir with TCGA-*.png masks"""


def _normalise(name: str) -> str:
    return name.lower().replace(" ", "_")


def _child(folder: Path, name: str) -> Path | None:
    for p in folder.iterdir():
        if p.is_dir() and _normalise(p.name) == _normalise(name):
            return p
    return None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name.startswith("TCGA"))


def _is_root(folder: Path, masks_elsewhere: bool = False) -> bool:
    if _child(folder, "Tissue Images") is not None or any(p.suffix.lower() == ".xml" for p in folder.iterdir()):
        return True
    return masks_elsewhere and bool(_images_in(folder))  # TCGA-*.tif alone, masks in mask_dir


def _patient(name: str) -> str:
    """TCGA case id (``TCGA-21-5784``): images of one case come from one patient."""
    return "-".join(name.split("-")[:3])


# MoNuSeg outlines every nucleus of its images: outlines spanning less than this share of an image in both
# directions mean the image is not the one the XML was drawn on (resized, say), and every score would be wrong
MIN_EXTENT = 0.7


def _load_annotation(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if path.suffix.lower() == ".xml":
        _check_extent(path, shape)
        return rasterise_regions(path, shape)
    return read_mask(path)


def _check_extent(path: Path, shape: tuple[int, int]) -> None:
    """Refuse an XML whose outlines cover only a corner of the image (an image upscaled beside its XML fits the
    outlines but leaves most of its nuclei unannotated: Jaccard 0.14 with no word)."""
    regions = [vertices for _, vertices in read_regions(path) if len(vertices)]
    if not regions:
        return
    high = np.concatenate(regions).max(axis=0)
    height, width = shape
    if high[0] < MIN_EXTENT * width and high[1] < MIN_EXTENT * height:
        factor = min(width / max(high[0], 1), height / max(high[1], 1))
        raise AnnotationError(
            f"{path}: its outlines span x 0..{high[0]:.0f}, y 0..{high[1]:.0f} of a {width}x{height} image; MoNuSeg "
            f"outlines every nucleus, so the image is not the one the XML annotates (resized about {factor:.1f}x?)"
        )


def find_monuseg(root: str | Path, mask_dir: str | Path | None = None) -> list[SourceImage]:
    """List the MoNuSeg images under ``root``, each paired with its XML (preferred) or mask file."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: MoNuSeg root folder not found; {EXPECTED_LAYOUT}")
    mask_dir = Path(mask_dir) if mask_dir else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise FileNotFoundError(f"{mask_dir}: MoNuSeg mask folder (data.sources.monuseg.mask_dir) not found")
    found = find_layout_root(root, lambda folder: _is_root(folder, mask_dir is not None))
    if found is None:
        raise DatasetLayoutError(f"{root}: no MoNuSeg images or annotations found; {EXPECTED_LAYOUT}")
    tissue = _child(found, "Tissue Images")
    image_dir = tissue if tissue is not None else found
    xml_dir = _child(found, "Annotations") or found
    images = _images_in(image_dir)
    if not images:
        raise DatasetLayoutError(f"{image_dir}: no TCGA-*.tif image found; {EXPECTED_LAYOUT}")
    sources = []
    for image_path in images:
        annotation = xml_dir / f"{image_path.stem}.xml"
        if not annotation.is_file() and mask_dir is not None:
            annotation = next(
                (
                    mask_dir / f"{image_path.stem}{s}"
                    for s in IMAGE_SUFFIXES
                    if (mask_dir / f"{image_path.stem}{s}").is_file()
                ),
                annotation,
            )
        if not annotation.is_file():
            looked = f"{xml_dir}" + (f" or {mask_dir}" if mask_dir else " (no mask_dir given)")
            raise DatasetLayoutError(
                f"{image_path}: no annotation {image_path.stem}.xml or mask in {looked}; {EXPECTED_LAYOUT}"
            )
        sources.append(
            SourceImage(
                "monuseg",
                image_path.stem,
                _patient(image_path.stem),
                image_path,
                annotation,
                read_rgb,
                _load_annotation,
            )
        )
    return sources


def find_monuseg_release(root: str | Path) -> list[SourceImage]:
    """The official MoNuSeg test release (``TCGA-*.tif`` beside ``TCGA-*.xml``; the training release's
    ``Tissue Images/`` + ``Annotations/`` works too), every image with its XML and every XML with its image:
    instances come from the XML only. Unpaired files are named in one error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: MoNuSeg folder not found; {EXPECTED_LAYOUT}")
    found = find_layout_root(root, _is_root)
    if found is None:
        raise DatasetLayoutError(f"{root}: no MoNuSeg images or XML annotations found; {EXPECTED_LAYOUT}")
    tissue = _child(found, "Tissue Images")
    image_dir = tissue if tissue is not None else found
    xml_dir = _child(found, "Annotations") or found
    images = {p.stem: p for p in _images_in(image_dir)}
    xmls = {p.stem: p for p in xml_dir.iterdir() if p.suffix.lower() == ".xml"}
    lonely_images = sorted(images[k].name for k in set(images) - set(xmls))
    lonely_xml = sorted(xmls[k].name for k in set(xmls) - set(images))
    if lonely_images or lonely_xml:
        problems = []
        if lonely_images:
            problems.append(f"images without XML in {xml_dir}: {', '.join(lonely_images)}")
        if lonely_xml:
            problems.append(f"XML without image in {image_dir}: {', '.join(lonely_xml)}")
        raise DatasetLayoutError(f"{root}: " + "; ".join(problems))
    if not images:
        raise DatasetLayoutError(f"{image_dir}: no TCGA-*.tif image found; {EXPECTED_LAYOUT}")
    return [
        SourceImage("monuseg", stem, _patient(stem), images[stem], xmls[stem], read_rgb, _load_annotation)
        for stem in sorted(images)
    ]
