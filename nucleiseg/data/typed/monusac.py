"""Reader for MoNuSAC 2020 (Verma et al., IEEE TMI 2021): H&E regions of lung, prostate, kidney and breast at 40x
with nuclei of 4 classes outlined in Aperio ImageScope XML.

Layout (challenge release; MoNuSAC's own n-ary_mask_generation.ipynb reads the XML so):
  ROOT/<split folder>/TCGA-XX-XXXX-01Z-00-DX1/NAME.tif (or NAME.svs) + NAME.xml   one folder per patient
  NAME.xml: Annotation elements, each with ``Attributes/Attribute@Name`` = its class (Epithelial, Lymphocyte,
  Neutrophil, Macrophage) and ``Regions/Region/Vertices/Vertex@X,Y`` outlines. The test release also marks
  "Ambiguous" regions (faint nuclei, uncertain classes, other cell types): they are counted, kept out of the
  nuclei, and given as a mask by :func:`ambiguous_mask` so that a loss or a metric can leave them out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nucleiseg.data.aperio_xml import check_fits, paint_instances, polygon_pixels, read_labelled_regions
from nucleiseg.data.image_io import MAX_WHOLE_PIXELS, read_rgb
from nucleiseg.data.source import SourceImage
from nucleiseg.data.typed.common import find_folders
from nucleiseg.util.errors import AnnotationError, DatasetLayoutError, ImageReadError

MONUSAC_CLASSES = ("epithelial", "lymphocyte", "neutrophil", "macrophage")  # Cell_counting.ipynb's label_map order
AMBIGUOUS = "ambiguous"
MONUSAC_MPP = 0.25  # 40x (challenge data page: "40x scanner magnification")
IMAGE_SUFFIXES = (".tif", ".tiff", ".svs")  # the .tif copy of a sub-image is preferred to its .svs
EXPECTED_LAYOUT = """expected the MoNuSAC release:
  ROOT/MoNuSAC_images_and_annotations/TCGA-XX-XXXX-01Z-00-DX1/NAME.tif (or .svs) + NAME.xml (one folder per patient)"""


def _is_patient_folder(folder: Path) -> bool:
    return folder.name.upper().startswith("TCGA") and any(p.suffix.lower() == ".xml" for p in folder.iterdir())


def _image_of(xml: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        if xml.with_suffix(suffix).is_file():
            return xml.with_suffix(suffix)
    raise DatasetLayoutError(f"{xml}: no image {xml.stem}.tif or .svs beside it; {EXPECTED_LAYOUT}")


def find_monusac(root: str | Path) -> list[SourceImage]:
    """The MoNuSAC sub-images under ``root`` (training and test releases, as found); ``patient`` is the TCGA case
    (``TCGA-55-1594``), ``metadata["split"]`` ``test`` for a folder named like the test release, else ``train``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: MoNuSAC root folder not found; {EXPECTED_LAYOUT}")
    patients = find_folders(root, _is_patient_folder)
    if not patients:
        raise DatasetLayoutError(f"{root}: no TCGA-* patient folder with .xml annotations found; {EXPECTED_LAYOUT}")
    sources = []
    for folder in patients:
        above = folder.relative_to(root).parts[:-1] or (root.name,)  # the release folder ("... Testing Data ...")
        split = "test" if any("test" in name.lower() for name in above) else "train"
        for xml in sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml"):
            image = _image_of(xml)
            sources.append(
                SourceImage(
                    "monusac",
                    xml.stem,
                    "-".join(folder.name.split("-")[:3]),
                    image,
                    xml,
                    read_monusac_image,
                    _load_instances,
                    MONUSAC_MPP,
                    MONUSAC_CLASSES,
                    monusac_labels,
                    {"split": split},
                )
            )
    return sources


def read_monusac_image(path: Path) -> np.ndarray:
    """``uint8 HxWx3``: the ``.tif`` copies through the common reader (their alpha is dropped), an ``.svs`` by its
    first (full-resolution) TIFF page."""
    if path.suffix.lower() != ".svs":
        return read_rgb(path)
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages.first
            if page.imagewidth * page.imagelength > MAX_WHOLE_PIXELS:
                raise ImageReadError(f"{path}: {page.imagewidth}x{page.imagelength} px; expected a MoNuSAC sub-image")
            array = np.asarray(page.asarray())
    except (tifffile.TiffFileError, ValueError, OSError) as error:
        raise ImageReadError(f"{path}: cannot decode the .svs ({str(error)[:120]}); use its .tif copy") from None
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.dtype != np.uint8:
        raise ImageReadError(f"{path}: .svs page of {array.dtype} {array.shape}; expected 8-bit RGB(A)")
    return np.ascontiguousarray(array[..., :3])


def _classified_regions(path: Path, shape: tuple[int, int]) -> tuple[list[tuple[int, np.ndarray]], list[np.ndarray]]:
    """``([(class index, vertices), ...] of the nuclei, [vertices, ...] of the ambiguous regions)``."""
    regions = read_labelled_regions(path)
    check_fits(path, [(region_id, vertices) for _, region_id, vertices in regions], shape)
    index = {name: k for k, name in enumerate(MONUSAC_CLASSES, start=1)}
    unknown = sorted({label for label, _, _ in regions if label.lower() not in (*index, AMBIGUOUS)})
    if unknown:
        expected = ", ".join(name.capitalize() for name in (*MONUSAC_CLASSES, AMBIGUOUS))
        raise AnnotationError(f"{path}: annotation classes {unknown}; expected {expected}")
    nuclei = [(index[label.lower()], v) for label, _, v in regions if label.lower() != AMBIGUOUS]
    return nuclei, [v for label, _, v in regions if label.lower() == AMBIGUOUS]


def monusac_labels(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(instances int32 HxW, types int32 HxW)`` of one MoNuSAC XML over an image of ``shape``: outlines filled
    as MoNuSAC's reference code does (skimage.draw.polygon), overlaps to the smaller nucleus (as for MoNuSeg);
    ambiguous regions are not nuclei."""
    nuclei, _ = _classified_regions(path, shape)
    instances, label_of = paint_instances([polygon_pixels(vertices, shape) for _, vertices in nuclei], shape)
    class_of = np.zeros(int(instances.max()) + 1, dtype=np.int32)
    for (klass, _), label in zip(nuclei, label_of.tolist(), strict=True):
        if label:  # 0: no pixel of its own left
            class_of[label] = klass
    return instances, class_of[instances]


def ambiguous_mask(source: SourceImage, shape: tuple[int, int]) -> np.ndarray:
    """``bool HxW``: the ambiguous regions of a MoNuSAC image (test release), to leave out of losses and metrics."""
    _, ambiguous = _classified_regions(Path(source.annotation_path), shape)
    mask = np.zeros(shape, dtype=bool)
    for vertices in ambiguous:
        pixels = polygon_pixels(vertices, shape)
        if pixels is not None:
            mask[pixels] = True
    return mask


def ambiguous_count(source: SourceImage) -> int:
    """How many ambiguous regions the image's XML marks."""
    return sum(label.lower() == AMBIGUOUS for label, _, _ in read_labelled_regions(source.annotation_path))


def _load_instances(path: Path, shape: tuple[int, int]) -> np.ndarray:
    return monusac_labels(path, shape)[0]
