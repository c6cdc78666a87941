"""Objects of a QuPath GeoJSON export (*File > Export objects as GeoJSON*), as nuclei outlines with a class.

QuPath writes a FeatureCollection (0.4 and later, "Export as FeatureCollection") or a plain list of Features, in the
image's full-resolution pixel coordinates, pixel (x, y) covering [x, x+1] x [y, y+1]. A feature's class is
``properties.classification.name`` (``names`` for a derived class in 0.4+) and its colour
``classification.color`` ([r, g, b], 0.4+) or ``colorRGB`` (packed integer, 0.2-0.3). A cell object exported with
its nucleus has the nucleus outline in ``nucleusGeometry``: that outline is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nucleiseg.util.errors import AnnotationError

POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class QuPathObject:
    """One exported object: its outline (a shapely Polygon or MultiPolygon; None for a point, a line or an empty
    geometry), its geometry type as written, its class name (None: unclassified) and the class colour if given."""

    outline: Any
    geometry_type: str
    class_name: str | None
    colour: tuple[int, int, int] | None


def _features(payload: object, path: Path) -> list[dict]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and payload.get("type") == "FeatureCollection":
        return list(payload.get("features") or [])
    if isinstance(payload, dict) and payload.get("type") == "Feature":
        return [payload]
    raise AnnotationError(f"{path}: not a QuPath export; expected a FeatureCollection or a list of Features")


def _colour(classification: dict) -> tuple[int, int, int] | None:
    colour = classification.get("color", classification.get("colour"))
    if isinstance(colour, list) and len(colour) >= 3 and all(isinstance(c, int) for c in colour[:3]):
        return tuple(int(c) & 255 for c in colour[:3])
    packed = classification.get("colorRGB")
    if isinstance(packed, int):  # QuPath 0.2-0.3: packed (A)RGB, signed 32-bit
        return ((packed >> 16) & 255, (packed >> 8) & 255, packed & 255)
    return None


def _classification(properties: dict) -> tuple[str | None, tuple[int, int, int] | None]:
    classification = properties.get("classification")
    if not isinstance(classification, dict):
        return None, None
    name = classification.get("name") or ": ".join(str(n) for n in classification.get("names") or [])
    return (str(name).strip() or None), _colour(classification)


def _outline(geometry: dict, index: int, path: Path) -> tuple[Any, str]:
    """``(shapely polygonal outline or None, geometry type)``; self-intersecting outlines are repaired to their
    full area (shapely.make_valid), the polygonal parts of a collection kept."""
    import shapely
    from shapely.errors import ShapelyError
    from shapely.geometry import shape

    kind = str(geometry.get("type")) if isinstance(geometry, dict) else "None"
    try:
        parsed = shape(geometry) if isinstance(geometry, dict) else None
    except (ShapelyError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise AnnotationError(f"{path}: feature {index} has a malformed {kind} geometry ({str(error)[:100]})") from None
    if parsed is None or parsed.is_empty:
        return None, kind
    if not parsed.is_valid:
        parsed = shapely.make_valid(parsed)
    if parsed.geom_type == "GeometryCollection":
        parts = [part for part in parsed.geoms if part.geom_type in POLYGONAL]
        parsed = shapely.union_all(parts) if parts else None
    if parsed is None or parsed.geom_type not in POLYGONAL or parsed.area <= 0:
        return None, kind
    return parsed, kind


def read_qupath_objects(path: str | Path) -> list[QuPathObject]:
    """The objects of the QuPath GeoJSON ``path`` in file order (any other JSON is refused, naming the file)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: not JSON ({str(error)[:100]}); expected a QuPath GeoJSON export") from None
    objects = []
    for index, feature in enumerate(_features(payload, path)):
        if not isinstance(feature, dict):
            raise AnnotationError(f"{path}: item {index} is a {type(feature).__name__}; expected a GeoJSON Feature")
        properties = feature.get("properties") or {}
        geometry = feature.get("nucleusGeometry") or feature.get("geometry")  # a cell: its nucleus
        outline, kind = _outline(geometry, index, path)
        name, colour = _classification(properties)
        objects.append(QuPathObject(outline, kind, name, colour))
    return objects
