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
NUCLEUS_NAMESPACE = uuid.UUID("0f6c8f3e-4b7a-5d0e-9a51-6e75636c6569")  # nucleiseg's UUID5 namespace (fixed forever)


def nucleus_uuid(input_sha256: str | None, nucleus_id: int) -> str:
    """The GeoJSON id of nucleus ``nucleus_id`` of the input whose content hash is ``input_sha256``: the same on
    every run (UUID5), so QuPath replaces rather than duplicates on re-import; random when the input is unknown."""
    if not input_sha256:
        return str(uuid.uuid4())
    return str(uuid.uuid5(NUCLEUS_NAMESPACE, f"{input_sha256}:{int(nucleus_id)}"))


def outline_overlay(image: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """``uint8 HxWx3`` image with the inner boundary of every instance painted in :data:`OUTLINE_RGB`."""
    overlay = image.copy()
    overlay[find_boundaries(instances, mode="inner")] = OUTLINE_RGB
    return overlay


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
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the nuclei as QuPath imports them (File > Import objects): one detection
    of class "Nucleus" per instance, a UUID as ``id`` (QuPath keeps UUID ids and replaces any other; deterministic
    from ``input_sha256``, see :func:`nucleus_uuid`), and the nucleus's measurements (``features``) as properties."""
    features_geojson = nucleus_features_geojson(instances, features, offset, input_sha256=input_sha256)
    return {"type": "FeatureCollection", "features": features_geojson}


def nucleus_features_geojson(
    instances: np.ndarray,
    features: pd.DataFrame | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    input_sha256: str | None = None,
) -> list[dict[str, Any]]:
    """The GeoJSON Features of :func:`geojson_nuclei` (a slide writes them window by window and sets the ids
    when the nuclei have their slide-wide numbers)."""
    by_id = features.set_index("nucleus_id") if features is not None and len(features) else None
    collection = []
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
                **{k: float(row[k]) for k in row.index if k not in ("image",) and np.isscalar(row[k])},
            }
        feature_id = nucleus_uuid(input_sha256, label)
        collection.append({"type": "Feature", "id": feature_id, "geometry": geometry, "properties": properties})
    return collection


def geojson_bytes(collection: dict[str, Any]) -> bytes:
    return json.dumps(collection, separators=(",", ":")).encode()
