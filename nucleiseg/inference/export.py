"""Outputs of ``nucleiseg predict``: encoded in memory, then written atomically by the caller.

- probability map: ``float32`` TIFF (zlib);
- binary mask: PNG, 0 / 255;
- instance labels: ``int32`` TIFF (zlib), 0 = background;
- overlay: PNG of the image with each nucleus outlined;
- nuclei: GeoJSON FeatureCollection, one Polygon per nucleus in pixel coordinates on QuPath's pixel-corner
  convention, as QuPath (0.4 and later) imports it (File > Import objects): UUID ids, ``objectType`` detection,
  classification "Nucleus", measurements per nucleus. The ids are deterministic (:func:`nucleus_uuid`: the input's
  content hash and the nucleus id), so importing a re-run into QuPath replaces the nuclei instead of doubling them.
"""

from __future__ import annotations

import json
import uuid
import warnings
from typing import Any

import numpy as np
import pandas as pd
from skimage.segmentation import find_boundaries

# Our outlines are in pixel coordinates on purpose (an identity transform): rasterio's "not georeferenced" notice
# is not for us, and a warnings.catch_warnings() per call would not be thread-safe (slide windows run in threads)
warnings.filterwarnings("ignore", message="Dataset has no geotransform", module="rasterio")

OUTLINE_RGB = (255, 230, 0)
NUCLEUS_RGB = (0, 200, 0)  # the class colour QuPath shows ("color": [r, g, b], QuPath 0.4 and later)
# class colours of a typed model's nuclei in QuPath (one per class, in order; QuPath's own defaults for its
# Tumor/Stroma/Immune cells/Necrosis/Other, then distinct ones), and an overlay's outlines
TYPE_COLOURS = ((200, 0, 0), (150, 200, 150), (160, 90, 160), (50, 50, 50), (255, 200, 0), (0, 150, 200),
                (255, 100, 180), (120, 80, 20))  # fmt: skip


def class_colour(index: int) -> tuple[int, int, int]:
    """The colour of class ``index`` (1-based) of a typed model."""
    return TYPE_COLOURS[(index - 1) % len(TYPE_COLOURS)]


NUCLEUS_NAMESPACE = uuid.UUID("0f6c8f3e-4b7a-5d0e-9a51-6e75636c6569")  # nucleiseg's UUID5 namespace (fixed forever)


def nucleus_uuid(input_sha256: str | None, nucleus_id: int) -> str:
    """The GeoJSON id of nucleus ``nucleus_id`` of the input whose content hash is ``input_sha256``: the same on
    every run (UUID5), so QuPath replaces rather than duplicates on re-import; random when the input is unknown."""
    if not input_sha256:
        return str(uuid.uuid4())
    return str(uuid.uuid5(NUCLEUS_NAMESPACE, f"{input_sha256}:{int(nucleus_id)}"))


def outline_overlay(
    image: np.ndarray, instances: np.ndarray, classes: np.ndarray | None = None, names: list[str] | None = None
) -> np.ndarray:
    """``uint8 HxWx3`` image with the inner boundary of every instance painted in :data:`OUTLINE_RGB`; for a typed
    model (``classes``: each label's class 1..K, ``names`` the classes) in its class's colour, with a legend."""
    overlay = image.copy()
    edges = find_boundaries(instances, mode="inner")
    if classes is None:
        overlay[edges] = OUTLINE_RGB
        return overlay
    palette = np.array([OUTLINE_RGB] + [class_colour(k) for k in range(1, len(names or []) + 1)], np.uint8)
    overlay[edges] = palette[np.clip(np.asarray(classes)[instances[edges]], 0, len(palette) - 1)]
    return _legend(overlay, names or [], palette[1:])


def _legend(image: np.ndarray, names: list[str], colours: np.ndarray) -> np.ndarray:
    """The class names in their colours at the bottom left of ``image``."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    for row, (name, colour) in enumerate(zip(names, colours, strict=True)):
        top = image.shape[0] - 12 * (len(names) - row) - 2
        draw.rectangle((2, top, 12, top + 9), fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
        draw.text((15, top - 1), name, fill=(0, 0, 0))
    return np.asarray(picture)


def warning_banner(image: np.ndarray, text: str) -> np.ndarray:
    """``uint8 HxWx3`` with ``text`` in white on a red band across its top (a picture that must not be taken
    for what it is not says so itself)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    band = min(image.shape[0], 14)
    draw.rectangle((0, 0, image.shape[1], band), fill=(200, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(picture)


def instance_polygons(
    instances: np.ndarray, offset: tuple[float, float] = (0.0, 0.0), scale: float = 1.0
) -> dict[int, dict[str, Any]]:
    """``{label: GeoJSON geometry}``: the exact outline of each instance along pixel edges, in QuPath's convention
    (pixel (x, y) is the square [x, x+1] x [y, y+1]), scaled by ``scale`` (slide pixels per pixel of
    ``instances``) and shifted by ``offset`` = (x0, y0).

    rasterio's polygonize (GDAL) traces the edges, so rasterising a polygon back at pixel centres gives the
    instance exactly, 1-pixel nuclei and holes included; pixels of one instance touching only at a corner
    become a MultiPolygon (4-connected pieces), which QuPath imports as one object.
    """
    from affine import Affine
    from rasterio.features import shapes
    from shapely.geometry import mapping, shape
    from shapely.ops import unary_union

    pieces: dict[int, list] = {}
    labels = np.ascontiguousarray(instances, dtype=np.int32)  # polygonize takes int32, not int64
    transform = Affine(float(scale), 0.0, float(offset[0]), 0.0, float(scale), float(offset[1]))
    for geometry, value in shapes(labels, mask=labels > 0, connectivity=4, transform=transform):
        pieces.setdefault(int(value), []).append(shape(geometry))
    outlines = {}
    for label in sorted(pieces):
        merged = pieces[label][0] if len(pieces[label]) == 1 else unary_union(pieces[label])
        outlines[label] = mapping(merged)
    return outlines


def geojson_nuclei(
    instances: np.ndarray,
    features: pd.DataFrame | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    input_sha256: str | None = None,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the nuclei as QuPath imports them (File > Import objects): one detection
    of class "Nucleus" per instance (a typed model's: the nucleus's class, from ``features``' ``type`` column, in its
    :func:`class_colour`), a UUID as ``id`` (QuPath keeps UUID ids and replaces any other; deterministic
    from ``input_sha256``, see :func:`nucleus_uuid`), and the nucleus's measurements (``features``) as properties."""
    features_geojson = nucleus_features_geojson(instances, features, offset, input_sha256=input_sha256, classes=classes)
    return {"type": "FeatureCollection", "features": features_geojson}


def nucleus_features_geojson(
    instances: np.ndarray,
    features: pd.DataFrame | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    input_sha256: str | None = None,
    classes: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The GeoJSON Features of :func:`geojson_nuclei` (a slide writes them window by window and sets the ids
    when the nuclei have their slide-wide numbers)."""
    by_id = features.set_index("nucleus_id") if features is not None and len(features) else None
    collection = []
    classes = list(classes or [])
    for label, geometry in instance_polygons(instances, offset, scale).items():
        properties: dict[str, Any] = {
            "objectType": "detection",
            "classification": {"name": "Nucleus", "color": list(NUCLEUS_RGB)},
            "isLocked": False,
        }
        if by_id is not None and label in by_id.index:
            row = by_id.loc[label]
            properties["measurements"] = {
                "nucleus_id": float(label),  # the nucleus's label in instances.tif
                **{k: float(row[k]) for k in row.index if k not in ("image", "type") and np.isscalar(row[k])},
            }
            if "type" in row.index and row["type"] in classes:  # a typed model: the nucleus's class, coloured
                colour = class_colour(classes.index(row["type"]) + 1)
                properties["classification"] = {"name": str(row["type"]), "color": list(colour)}
        feature_id = nucleus_uuid(input_sha256, label)
        collection.append({"type": "Feature", "id": feature_id, "geometry": geometry, "properties": properties})
    return collection


def geojson_bytes(collection: dict[str, Any]) -> bytes:
    return json.dumps(collection, separators=(",", ":")).encode()
