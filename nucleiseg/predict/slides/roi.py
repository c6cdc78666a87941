"""Regions of interest on a slide, as QuPath users draw them ("detect in annotation") and HoVer-Net's
``--input_mask_dir`` takes them: nuclei are predicted and reported only inside.

Two forms:

- a GeoJSON file of QuPath annotations (*File > Export objects as GeoJSON*): a FeatureCollection, a Feature or a
  list of Features with Polygon or MultiPolygon geometries in level-0 slide pixels; each feature is one region,
  named by its ``name`` or classification (else ``region-K``);
- a mask image (PNG/TIFF) at any scale of the slide (a thumbnail is fine: its aspect must be the slide's):
  every non-zero pixel is inside; each connected piece is one region ``region-K``.

A nucleus belongs to the region that holds its centroid. Regions are parsed with shapely (polygons) and
scikit-image (mask pieces); this module only maps them onto the slide's grid.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucleiseg.predict.slides.reader import SlideError

ROI_MODES = ("intersect", "replace")  # with the tissue found on the slide, or in its place
_GEOS = threading.Lock()  # one geometry operation at a time on the shared region outlines
ASPECT_TOLERANCE = 0.02


@dataclass
class Regions:
    """Named regions over a slide's level-0 pixels, from polygons or from a mask of ``mask_downsample``.

    Regions may overlap or nest (a tumour annotation inside a tissue annotation): each region counts every nucleus
    whose centroid it holds, so each region's density is its own nuclei over its own area; a nucleus in two regions
    counts in both, and the table's ``region`` names the innermost (smallest) one. ``notes`` says what was
    repaired, clipped or skipped while reading them."""

    names: list[str]
    polygons: list | None = None  # shapely geometries, level-0 pixels, valid, clipped to the slide
    mask: np.ndarray | None = None  # int32 labels 1..n, each level-0 pixel (x, y) at (y / d, x / d)
    mask_downsample: float = 1.0
    notes: list[str] = field(default_factory=list)

    def memberships(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """``bool (n_points, n_regions)``: which regions hold each level-0 point ``(xs, ys)``."""
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        inside = np.zeros((xs.size, len(self.names)), bool)
        if self.mask is not None:
            labels = self._mask_labels(xs, ys)
            for number in range(1, len(self.names) + 1):
                inside[:, number - 1] = labels == number
            return inside
        import shapely

        with _GEOS:  # windows in flight ask from several threads; GEOS prepares a geometry on first use, unsafely
            for number, polygon in enumerate(self.polygons or []):
                inside[:, number] = shapely.contains_xy(polygon, xs, ys)
        return inside

    def _mask_labels(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        rows = np.clip((ys / self.mask_downsample).astype(int), 0, self.mask.shape[0] - 1)
        cols = np.clip((xs / self.mask_downsample).astype(int), 0, self.mask.shape[1] - 1)
        inside = (ys >= 0) & (xs >= 0) & (ys / self.mask_downsample < self.mask.shape[0])
        inside &= xs / self.mask_downsample < self.mask.shape[1]
        return np.where(inside, self.mask[rows, cols], 0)

    def label_at(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Region number (1-based; 0: outside every region) of the level-0 points ``(xs, ys)``: where regions
        nest or overlap, the smallest one holding the point."""
        inside = self.memberships(xs, ys)
        order = np.argsort(self._areas())  # smallest first
        labels = np.zeros(inside.shape[0], np.int32)
        for index in order[::-1]:  # the smallest region written last wins
            labels[inside[:, index]] = index + 1
        return labels

    def _areas(self) -> np.ndarray:
        if self.mask is not None:
            return np.bincount(self.mask.ravel(), minlength=len(self.names) + 1)[1:].astype(float)
        return np.array([polygon.area for polygon in self.polygons or []], float)

    def on_grid(self, shape: tuple[int, int], downsample: float) -> np.ndarray:
        """The regions as ``bool HxW`` on a grid of ``shape`` whose pixel is ``downsample`` level-0 pixels: a grid
        pixel is inside when any region touches it (not only its centre), so a region narrower than a grid pixel
        still shows."""
        if self.mask is not None:
            rows, cols = np.mgrid[: shape[0], : shape[1]]
            return self._mask_labels((cols + 0.5) * downsample, (rows + 0.5) * downsample) > 0
        from rasterio.features import rasterize
        from rasterio.transform import Affine

        shapes = [(polygon, 1) for polygon in self.polygons or [] if not polygon.is_empty]
        transform = Affine.scale(downsample)
        return rasterize(shapes, out_shape=shape, transform=transform, all_touched=True, dtype="uint8") > 0

    def touches_box(self, box: tuple[float, float, float, float]) -> bool:
        """Whether any region has area inside the level-0 box ``(left, top, right, bottom)`` (exact for polygons;
        any mask pixel overlapping it for masks)."""
        left, top, right, bottom = box
        if self.mask is not None:
            d = self.mask_downsample
            rows = slice(max(0, int(np.floor(top / d))), max(0, int(np.ceil(bottom / d))))
            cols = slice(max(0, int(np.floor(left / d))), max(0, int(np.ceil(right / d))))
            return bool(self.mask[rows, cols].any())
        from shapely.geometry import box as make_box

        window = make_box(left, top, right, bottom)
        with _GEOS:
            return any(polygon.intersection(window).area > 0 for polygon in self.polygons or [])

    def areas_um2(self, mpp: float | None) -> dict[str, float | None]:
        """Each region's area on the slide in square micrometres (None when the slide's pixel size is unknown)."""
        if mpp is None:
            return {name: None for name in self.names}
        pixel = (self.mask_downsample * mpp) ** 2 if self.mask is not None else mpp**2
        return {name: float(area * pixel) for name, area in zip(self.names, self._areas(), strict=True)}


def _features(payload: object) -> list[dict]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and payload.get("type") == "FeatureCollection":
        return list(payload.get("features") or [])
    if isinstance(payload, dict) and payload.get("type") == "Feature":
        return [payload]
    if isinstance(payload, dict) and payload.get("type") in ("Polygon", "MultiPolygon"):
        return [{"type": "Feature", "geometry": payload, "properties": {}}]
    raise ValueError("expected a FeatureCollection, a Feature, a list of Features or a Polygon")


def _name(properties: dict, number: int) -> str:
    classification = properties.get("classification")
    if properties.get("name"):
        return str(properties["name"])
    if isinstance(classification, dict) and classification.get("name"):
        return f"{classification['name']}-{number}"
    return f"region-{number}"


def _unique(names: list[str]) -> tuple[list[str], list[str]]:
    """Names made unique (``Tumour``, ``Tumour (2)``...): two annotations of one name are two regions, each with
    its own nuclei and area; and a note for each repeated name. (Not ``#2``: many CSV readers take ``#`` for the
    start of a comment.)"""
    seen: dict[str, int] = {}
    unique, notes = [], []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    for name, count in seen.items():
        if count > 1:
            notes.append(f"{count} regions are named {name!r}: kept apart as {name!r}, {name + ' (2)'!r} ...")
    return unique, notes


def _polygonal(geometry: object) -> object:
    """The polygonal part of a geometry (make_valid can return lines or points beside the polygons)."""
    from shapely.geometry import GeometryCollection, MultiPolygon, Polygon

    if isinstance(geometry, Polygon | MultiPolygon):
        return geometry
    if isinstance(geometry, GeometryCollection):
        parts = [g for g in geometry.geoms if isinstance(g, Polygon | MultiPolygon)]
        polygons = [p for g in parts for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
        return MultiPolygon(polygons) if polygons else Polygon()
    return Polygon()


def _usable(path: Path, features: list[dict]) -> tuple[list[tuple[str, object]], list[str]]:
    """``(name, valid polygonal geometry)`` of each area feature, and notes on what was repaired or skipped."""
    from shapely import make_valid
    from shapely.geometry import shape

    kept, notes, skipped = [], [], []
    for number, feature in enumerate(features, start=1):
        properties = feature.get("properties") if isinstance(feature, dict) else None
        name = _name(properties or {}, number)
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not geometry:
            skipped.append(f"{name} (no geometry)")
            continue
        polygon = shape(geometry)
        if polygon.geom_type not in ("Polygon", "MultiPolygon"):
            skipped.append(f"{name} ({polygon.geom_type}, not an area)")
            continue
        if not polygon.is_valid:
            from shapely.validation import explain_validity

            why = explain_validity(polygon)
            polygon = _polygonal(make_valid(polygon))  # keeps every lobe of a self-intersecting outline
            notes.append(f"region {name}: invalid outline ({why}) repaired, area kept: {polygon.area:.0f} px")
        kept.append((name, polygon))
    if skipped:
        notes.append(f"skipped {len(skipped)} feature(s) that are not areas: {', '.join(skipped[:5])}")
    return kept, notes


def _read_geojson(path: Path, dimensions: tuple[int, int]) -> Regions:
    from shapely.errors import ShapelyError
    from shapely.geometry import box

    try:
        kept, notes = _usable(path, _features(json.loads(path.read_text())))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError,
            ShapelyError) as error:  # fmt: skip
        raise SlideError(
            f"{path}: not a GeoJSON of regions ({str(error)[:160]}); expected QuPath annotations"
        ) from None
    if not kept:
        raise SlideError(f"{path}: no Polygon or MultiPolygon region; expected QuPath annotations (areas, not points)")
    width, height = dimensions
    slide = box(0, 0, width, height)
    if not any(polygon.intersects(slide) for _, polygon in kept):
        bounds = np.array([polygon.bounds for _, polygon in kept])
        raise SlideError(
            f"{path}: its regions (x {bounds[:, 0].min():.0f}..{bounds[:, 2].max():.0f}, y {bounds[:, 1].min():.0f}.."
            f"{bounds[:, 3].max():.0f}) lie outside the slide ({width}x{height} level-0 pixels); expected "
            "coordinates in the slide's full-resolution pixels"
        )
    names, polygons = [], []
    for name, polygon in kept:
        clipped = polygon.intersection(slide)  # only the slide's part is tissue that can hold nuclei
        if clipped.area < polygon.area:
            off = 1 - clipped.area / polygon.area if polygon.area else 1.0
            notes.append(f"region {name}: {off:.0%} of it lies off the slide; its area counts the part on the slide")
        if clipped.area <= 0:
            notes.append(f"region {name}: entirely off the slide, left out")
            continue
        names.append(name)
        polygons.append(_polygonal(clipped))
    names, repeated = _unique(names)
    nested = _nesting(names, polygons)
    return Regions(names, polygons=polygons, notes=notes + repeated + nested)


def _nesting(names: list[str], polygons: list) -> list[str]:
    """A note for each pair of regions that overlap (nested or not): their nuclei count in both."""
    notes = []
    for i in range(len(polygons)):
        for j in range(i + 1, len(polygons)):
            if polygons[i].intersection(polygons[j]).area > 0:
                notes.append(f"regions {names[i]} and {names[j]} overlap: a nucleus in both counts in both")
    return notes[:20]


def _read_mask(path: Path, dimensions: tuple[int, int]) -> Regions:
    from skimage.measure import label

    from nucleiseg.data.image_io import read_rgb
    from nucleiseg.util.errors import ImageReadError

    try:
        array = read_rgb(path).max(axis=-1)
    except ImageReadError as error:
        raise SlideError(str(error)) from None
    width, height = dimensions
    mask_height, mask_width = array.shape
    downsample = width / mask_width
    if abs(height / mask_height - downsample) > ASPECT_TOLERANCE * downsample:
        raise SlideError(
            f"{path}: a {mask_width}x{mask_height} mask does not have the slide's shape ({width}x{height}); expected "
            "the slide at some scale (a thumbnail is fine)"
        )
    labels = label(array > 0, connectivity=2).astype(np.int32)
    if not labels.max():
        raise SlideError(f"{path}: the mask marks no region (every pixel is 0)")
    return Regions([f"region-{k}" for k in range(1, int(labels.max()) + 1)], mask=labels, mask_downsample=downsample)


def read_roi(path: str | Path, dimensions: tuple[int, int]) -> Regions:
    """The regions in ``path`` (GeoJSON, or a mask image) over a slide of ``dimensions`` (level-0 width, height)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: region file (--roi) not found")
    if path.suffix.lower() in (".geojson", ".json"):
        return _read_geojson(path, dimensions)
    return _read_mask(path, dimensions)
