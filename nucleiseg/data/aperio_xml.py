"""Rasterise Aperio ImageScope XML polygon annotations (the MoNuSeg format) into instance masks.

Schema: ``Annotations/Annotation/Regions/Region/Vertices/Vertex`` with float ``X`` (column) and ``Y`` (row).
The files come from outside, so they are parsed with defusedxml: DTDs and entity expansion (XML bombs) are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree
from skimage.draw import polygon as fill_polygon

from nucleiseg.util.errors import AnnotationError

# A nucleus outline needs a few vertices; the MoNuSeg files have ~10-60 per region. A region with more than
# MAX_VERTICES is not a nucleus outline (rasterising it would take minutes): refused, named.
MIN_VERTICES = 3
MAX_VERTICES = 10_000


def _parse(path: Path) -> SafeElementTree.ElementTree:
    try:
        return SafeElementTree.parse(path, forbid_dtd=True)
    except DefusedXmlException as error:
        raise AnnotationError(
            f"{path}: refused unsafe XML ({type(error).__name__}); annotation files must not declare a DTD or entities"
        ) from None
    except SafeElementTree.ParseError as error:
        raise AnnotationError(f"{path}: not well-formed XML ({error})") from None


def _region_vertices(path: Path, region: object, region_id: str) -> np.ndarray:
    """The ``float64 Nx2`` (x, y) vertices of one ``Region`` element."""
    vertices = []
    for count, vertex in enumerate(region.iter("Vertex")):
        if count >= MAX_VERTICES:
            raise AnnotationError(
                f"{path}: region {region_id} has more than {MAX_VERTICES} vertices; a nucleus outline has tens "
                "(is this a tissue annotation?)"
            )
        try:
            vertices.append((float(vertex.get("X")), float(vertex.get("Y"))))
        except (TypeError, ValueError):
            raise AnnotationError(
                f"{path}: region {region_id} has a malformed vertex (X={vertex.get('X')!r}, "
                f"Y={vertex.get('Y')!r}); expected numeric X and Y attributes"
            ) from None
    if not np.all(np.isfinite(vertices)):
        raise AnnotationError(f"{path}: region {region_id} has a non-finite vertex coordinate")
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 2)


def read_regions(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """Return ``[(region_id, vertices float64 Nx2 as (x, y)), ...]`` in file order."""
    return [(region_id, vertices) for _, region_id, vertices in read_labelled_regions(path)]


def read_labelled_regions(path: str | Path) -> list[tuple[str, str, np.ndarray]]:
    """Return ``[(annotation label, region_id, vertices float64 Nx2 as (x, y)), ...]`` in file order; the label is
    the ``Name`` of the first ``Attributes/Attribute`` of the region's ``Annotation`` (MoNuSAC puts the nucleus
    class there), "" when it has none."""
    path = Path(path)
    root = _parse(path).getroot()
    label_of = {}  # every Region of the file is read, inside an Annotation or not
    for annotation in root.iter("Annotation"):
        attribute = annotation.find("Attributes/Attribute")
        label = (attribute.get("Name") or "").strip() if attribute is not None else ""
        label_of.update({id(region): label for region in annotation.iter("Region")})
    regions = []
    for index, region in enumerate(root.iter("Region")):
        region_id = region.get("Id", f"#{index + 1}")
        regions.append((label_of.get(id(region), ""), region_id, _region_vertices(path, region, region_id)))
    if not regions:
        raise AnnotationError(f"{path}: no Region element found; expected Annotation/Regions/Region polygons")
    return regions


# Outlines drawn by hand overshoot the image edge a little (up to 3 px in the MoNuSeg release); more than this
# means the XML annotates another image, or this one at another size.
EDGE_TOLERANCE_PX, EDGE_TOLERANCE_SHARE = 8.0, 0.02


def check_fits(path: str | Path, regions: list[tuple[str, np.ndarray]], shape: tuple[int, int]) -> None:
    """Refuse outlines (``(id, Nx2 vertices)``) reaching well beyond an image of ``shape``."""
    vertices = np.concatenate([v for _, v in regions if len(v)]) if regions else np.zeros((0, 2))
    if not len(vertices):
        return
    height, width = shape
    slack = max(EDGE_TOLERANCE_PX, EDGE_TOLERANCE_SHARE * max(shape))
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    if low[0] < -slack or low[1] < -slack or high[0] > width + slack or high[1] > height + slack:
        raise AnnotationError(
            f"{path}: its outlines reach x {low[0]:.0f}..{high[0]:.0f}, y {low[1]:.0f}..{high[1]:.0f} but the image is "
            f"{width}x{height}: the XML annotates another image, or this one at another size (resized?); regions "
            "would be cut or lost"
        )


def rasterise_regions(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise the XML at ``path`` into ``int32 HxW`` instance labels, one label per region.

    Overlaps are resolved as :func:`paint_instances` does (the smaller nucleus keeps its pixels). Regions with
    fewer than 3 vertices or no pixel inside the image are dropped; labels are 1..N in file order of the regions
    that remain.
    """
    regions = read_regions(path)
    check_fits(path, regions, shape)
    mask, _ = paint_instances([polygon_pixels(vertices, shape) for _, vertices in regions], shape)
    if not mask.any():
        raise AnnotationError(
            f"{path}: none of its {len(regions)} regions has a pixel inside the {shape[1]}x{shape[0]} image; "
            "expected the annotation of this image"
        )
    return mask


def polygon_pixels(vertices: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rows, cols)`` of the pixels whose centres lie inside the ``Nx2`` (x, y) outline (pixel (r, c) centred at
    (x=c, y=r), as ImageScope and the MoNuSeg/MoNuSAC reference code draw them), clipped to ``shape``; None for an
    outline of fewer than 3 vertices."""
    if len(vertices) < MIN_VERTICES:
        return None
    return fill_polygon(vertices[:, 1], vertices[:, 0], shape=shape)


def paint_instances(
    pixel_sets: list[tuple[np.ndarray, np.ndarray] | None], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one instance per ``(rows, cols)`` pixel set into ``int32 HxW`` labels; returns ``(labels, label_of)``
    where ``label_of[k]`` is the label object ``k`` ended with (0: no pixel, or every pixel taken by others).

    Overlaps are resolved deterministically: objects are painted largest first, so where two outlines overlap
    the smaller nucleus keeps its pixels (otherwise a large outline could swallow a small one whole). Labels
    are 1..N in the order of the objects that keep a pixel.
    """
    painted = [(pixels[0].size, order, pixels) for order, pixels in enumerate(pixel_sets) if pixels and pixels[0].size]
    mask = np.zeros(shape, dtype=np.int32)
    label_of = np.zeros(len(pixel_sets), dtype=np.int32)
    for label, (_, order, _) in enumerate(sorted(painted, key=lambda p: p[1]), start=1):
        label_of[order] = label
    for _, order, (rows, cols) in sorted(painted, key=lambda p: (-p[0], p[1])):
        mask[rows, cols] = label_of[order]
    # a region fully covered by smaller ones disappears; renumber so labels stay 1..N without gaps
    present = np.unique(mask[mask > 0])
    lookup = np.zeros(len(painted) + 1, dtype=np.int32)
    lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup[mask], lookup[label_of]
