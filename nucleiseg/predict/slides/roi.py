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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nucleiseg.predict.slides.reader import SlideError

ROI_MODES = ("intersect", "replace")  # with the tissue found on the slide, or in its place
ASPECT_TOLERANCE = 0.02


@dataclass
class Regions:
    """Named regions over a slide's level-0 pixels, from polygons or from a mask of ``mask_downsample``."""

    names: list[str]
    polygons: list | None = None  # shapely geometries, level-0 pixels
    mask: np.ndarray | None = None  # int32 labels 1..n, each level-0 pixel (x, y) at (y / d, x / d)
    mask_downsample: float = 1.0

    def label_at(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Region number (1-based; 0: outside every region) of the level-0 points ``(xs, ys)``."""
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        if self.mask is not None:
            rows = np.clip((ys / self.mask_downsample).astype(int), 0, self.mask.shape[0] - 1)
            cols = np.clip((xs / self.mask_downsample).astype(int), 0, self.mask.shape[1] - 1)
            inside = (ys >= 0) & (xs >= 0) & (ys / self.mask_downsample < self.mask.shape[0])
            inside &= xs / self.mask_downsample < self.mask.shape[1]
            return np.where(inside, self.mask[rows, cols], 0)
        import shapely

        labels = np.zeros(xs.shape, np.int32)
        for number, polygon in enumerate(self.polygons or [], start=1):
            labels[(labels == 0) & shapely.contains_xy(polygon, xs, ys)] = number
        return labels

    def on_grid(self, shape: tuple[int, int], downsample: float) -> np.ndarray:
        """The regions as ``int32 HxW`` labels on a grid of ``shape`` whose pixel is ``downsample`` level-0 pixels
        (pixel centres tested)."""
        rows, cols = np.mgrid[: shape[0], : shape[1]]
        return self.label_at((cols + 0.5) * downsample, (rows + 0.5) * downsample).astype(np.int32)

    def areas_um2(self, mpp: float | None) -> dict[str, float | None]:
        """Each region's area in square micrometres (None when the slide's pixel size is unknown)."""
        if mpp is None:
            return {name: None for name in self.names}
        if self.mask is not None:
            counts = np.bincount(self.mask.ravel(), minlength=len(self.names) + 1)[1:]
            pixel = (self.mask_downsample * mpp) ** 2
            return {name: float(count * pixel) for name, count in zip(self.names, counts, strict=True)}
        return {name: float(polygon.area * mpp**2) for name, polygon in zip(self.names, self.polygons, strict=True)}


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


def _read_geojson(path: Path, dimensions: tuple[int, int]) -> Regions:
    from shapely.errors import ShapelyError
    from shapely.geometry import shape

    try:
        features = _features(json.loads(path.read_text()))
        polygons = [shape(feature["geometry"]) for feature in features]
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, KeyError, TypeError, ShapelyError) as error:
        raise SlideError(
            f"{path}: not a GeoJSON of regions ({str(error)[:160]}); expected QuPath annotations"
        ) from None
    kept = [(f, p) for f, p in zip(features, polygons, strict=True) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not kept:
        raise SlideError(f"{path}: no Polygon or MultiPolygon region; expected QuPath annotations (areas, not points)")
    width, height = dimensions
    names = [_name(feature.get("properties") or {}, k) for k, (feature, _) in enumerate(kept, start=1)]
    polygons = [polygon.buffer(0) if not polygon.is_valid else polygon for _, polygon in kept]
    from shapely.geometry import box

    slide = box(0, 0, width, height)
    if not any(polygon.intersects(slide) for polygon in polygons):
        bounds = np.array([polygon.bounds for polygon in polygons])
        raise SlideError(
            f"{path}: its regions (x {bounds[:, 0].min():.0f}..{bounds[:, 2].max():.0f}, y {bounds[:, 1].min():.0f}.."
            f"{bounds[:, 3].max():.0f}) lie outside the slide ({width}x{height} level-0 pixels); expected "
            "coordinates in the slide's full-resolution pixels"
        )
    return Regions(names, polygons=polygons)


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
