"""Outputs of ``nucleiseg predict``: encoded in memory, then written atomically by the caller.

- probability map: ``float32`` TIFF (zlib);
- binary mask: PNG, 0 / 255;
- instance labels: ``int32`` TIFF (zlib), 0 = background;
- overlay: PNG of the image with each nucleus outlined;
- nuclei: GeoJSON FeatureCollection, one Polygon per nucleus in pixel coordinates, as QuPath imports it
  (File > Import objects): ``objectType`` detection, classification "Nucleus", measurements per nucleus.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from skimage.measure import approximate_polygon, find_contours, regionprops
from skimage.segmentation import find_boundaries

OUTLINE_RGB = (255, 230, 0)
NUCLEUS_COLOUR = -16711936  # QuPath's packed ARGB integer for green, used as the class colour


def tiff_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression="zlib")
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def outline_overlay(image: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """``uint8 HxWx3`` image with the inner boundary of every instance painted in :data:`OUTLINE_RGB`."""
    overlay = image.copy()
    overlay[find_boundaries(instances, mode="inner")] = OUTLINE_RGB
    return overlay


def instance_polygons(instances: np.ndarray, tolerance: float = 0.5) -> dict[int, list[list[float]]]:
    """``{label: closed ring [[x, y], ...]}``: the outer outline of each instance, in pixel coordinates.

    The ring follows pixel edges' midpoints (marching squares at 0.5 on the padded instance), is simplified
    by at most ``tolerance`` pixels, is closed (first point repeated) and runs counter-clockwise (RFC 7946).
    """
    rings: dict[int, list[list[float]]] = {}
    for region in regionprops(instances):
        top, left, bottom, right = region.bbox
        crop = np.pad(region.image, 1).astype(np.float32)
        contours = find_contours(crop, 0.5)
        if not contours:
            continue
        outline = max(contours, key=len)
        outline = approximate_polygon(outline, tolerance) if tolerance else outline
        xy = np.stack([outline[:, 1] + left - 1, outline[:, 0] + top - 1], axis=1)
        if len(xy) < 4:
            continue
        if not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        signed_area = 0.5 * np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1])
        if signed_area < 0:  # image rows grow downwards: reverse to counter-clockwise in x/y
            xy = xy[::-1]
        rings[region.label] = np.round(xy, 2).tolist()
    return rings


def geojson_nuclei(instances: np.ndarray, features: pd.DataFrame | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the nuclei, with their measurements when ``features`` is given."""
    by_id = features.set_index("instance_id") if features is not None and len(features) else None
    collection = []
    for label, ring in instance_polygons(instances).items():
        properties: dict[str, Any] = {
            "objectType": "detection",
            "classification": {"name": "Nucleus", "colorRGB": NUCLEUS_COLOUR},
            "isLocked": False,
            "instance_id": int(label),
        }
        if by_id is not None and label in by_id.index:
            row = by_id.loc[label]
            properties["measurements"] = {
                k: float(row[k]) for k in row.index if k not in ("image",) and np.isscalar(row[k])
            }
        collection.append(
            {
                "type": "Feature",
                "id": f"nucleus-{label}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": properties,
            }
        )
    return {"type": "FeatureCollection", "features": collection}


def geojson_bytes(collection: dict[str, Any]) -> bytes:
    return json.dumps(collection, separators=(",", ":")).encode()
