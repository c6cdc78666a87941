"""QuPath annotations -> a typed training folder (``nucleiseg data from-qupath``).

Each image is paired with the GeoJSON of the same name (``NAME.geojson`` or ``NAME.tif.geojson`` for ``NAME.*``,
beside the images or given), its classified polygons rasterised into instance labels and a class map, and the set
written as a typed folder (:mod:`nucleiseg.data.typed.folder`) with ``report.json``. Overlaps go to the smaller
object, as for MoNuSeg (:func:`nucleiseg.data.aperio_xml.paint_instances`). Whole-slide images are out of scope:
they are refused (export the annotated regions as image tiles with their objects instead).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.data.aperio_xml import paint_instances
from nucleiseg.data.image_io import IMAGE_SUFFIXES, TooLargeError, read_rgb
from nucleiseg.data.typed.folder import refuse_existing, write_typed_folder
from nucleiseg.data.typed.qupath_geojson import QuPathObject, read_qupath_objects
from nucleiseg.util.errors import ConfigError

GEOJSON_SUFFIXES = (".geojson", ".json")
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".czi", ".qptiff")
RARE_CLASS_OBJECTS = 5  # a class named by fewer objects than this cannot be learnt: reported
REGION_HOLDS = 2  # an outline holding this many other outlines whole is a region drawn around them
COUNTED = ("outside_image", "no_pixel", "clipped", "overlapping", "covered", "unclassified")  # per image, summed
SLIDE_REFUSAL = (
    "whole-slide images are not supported by from-qupath yet; in QuPath export the annotated regions as image "
    "tiles with their objects (or crop them), then convert the tiles"
)


def _key(path: Path) -> str:
    """The image name a file stands for: ``tile.png`` and ``tile.geojson`` / ``tile.png.geojson`` are ``tile``."""
    stem = path.stem
    inner = Path(stem).suffix.lower()
    return stem[: -len(inner)] if inner in (*IMAGE_SUFFIXES, *SLIDE_SUFFIXES) else stem


def _files(paths: Sequence[Path], suffixes: tuple[str, ...]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: not found")
    return list(dict.fromkeys(found))


def pair_exports(images: Path, geojsons: Sequence[Path]) -> tuple[list[tuple[Path, Path]], list[str], list[str]]:
    """``(pairs, images without a GeoJSON, GeoJSONs without an image)`` by name; GeoJSONs beside the images count."""
    image_files = _files([images], (*IMAGE_SUFFIXES, *SLIDE_SUFFIXES))
    slides = [p.name for p in image_files if p.suffix.lower() in SLIDE_SUFFIXES]
    if slides:
        raise ConfigError(f"{slides[0]}: {SLIDE_REFUSAL}")
    beside = _files([images if images.is_dir() else images.parent], (".geojson",))
    if not images.is_dir():  # one image: only its own export beside it
        beside = [p for p in beside if _key(p) == _key(images)]
    exports = list(dict.fromkeys([*beside, *_files(geojsons, GEOJSON_SUFFIXES)]))
    by_key: dict[str, Path] = {}
    for export in exports:
        if by_key.setdefault(_key(export), export) != export:
            raise ConfigError(f"{export}: a second GeoJSON for image {_key(export)} (first: {by_key[_key(export)]})")
    image_keys: dict[str, Path] = {}
    for image in image_files:
        if image_keys.setdefault(_key(image), image) != image:
            raise ConfigError(f"{image}: a second image named {_key(image)} ({image_keys[_key(image)].name})")
    pairs = [(image_keys[k], by_key[k]) for k in sorted(image_keys) if k in by_key]
    lonely_images = sorted(image_keys[k].name for k in image_keys if k not in by_key)
    lonely_exports = sorted(by_key[k].name for k in by_key if k not in image_keys)
    return pairs, lonely_images, lonely_exports


def _candidates(objects: list[QuPathObject]) -> tuple[list[int], set[int]]:
    """``(indices of the objects taken as nuclei, indices of the regions)``: polygonal outlines, less those that
    hold ``REGION_HOLDS`` or more other outlines whole (the area a user drew around nuclei, which QuPath exports
    with them, is not a nucleus; nuclei do not hold each other)."""
    import shapely

    polygonal = [k for k, o in enumerate(objects) if o.outline is not None]
    regions: set[int] = set()
    if len(polygonal) > REGION_HOLDS:
        tree = shapely.STRtree([objects[k].outline for k in polygonal])
        for i, k in enumerate(polygonal):
            if len(set(tree.query(objects[k].outline, "contains").tolist()) - {i}) >= REGION_HOLDS:
                regions.add(k)
    return [k for k in polygonal if k not in regions], regions


def object_pixels(outline: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rows, cols)`` of the pixels whose centres lie inside ``outline`` (QuPath's pixel-corner coordinates, holes
    and MultiPolygon parts included: rasterio.features.rasterize over the outline's bounding box); None outside."""
    from affine import Affine
    from rasterio.features import rasterize

    x0, y0, x1, y1 = outline.bounds
    col0, row0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    col1, row1 = min(int(np.ceil(x1)), shape[1]), min(int(np.ceil(y1)), shape[0])
    if col1 <= col0 or row1 <= row0:
        return None
    window = rasterize([(outline, 1)], (row1 - row0, col1 - col0), transform=Affine.translation(col0, row0))
    rows, cols = np.nonzero(window)
    return (rows + row0, cols + col0) if rows.size else None


def _tally(objects: list[QuPathObject], nuclei: list[int], pixels: list, label_of: list[int], shape: tuple) -> Counter:
    """What became of each nucleus outline: outside the image, too small for a pixel, clipped by the image edge,
    overlapping another, covered by smaller ones, kept unclassified, kept with its class (``class:NAME``)."""
    from shapely.geometry import box

    frame = box(0, 0, shape[1], shape[0])
    coverage = np.zeros(shape, dtype=np.int32)
    for found in pixels:
        if found is not None:
            coverage[found] += 1
    tally: Counter = Counter()
    for k, found, label in zip(nuclei, pixels, label_of, strict=True):
        outline, name = objects[k].outline, objects[k].class_name
        if found is None:
            tally["outside_image" if not outline.intersects(frame) else "no_pixel"] += 1
            continue
        tally["clipped"] += not frame.contains(outline)
        tally["overlapping"] += bool(coverage[found].max() > 1)
        if not label:
            tally["covered"] += 1
        else:
            tally["unclassified" if name is None else f"class:{name}"] += 1
    return tally


def rasterise_objects(
    objects: list[QuPathObject], shape: tuple[int, int], classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(instances int32 HxW, types int32 HxW, counts)`` of one image's objects; ``counts`` says what was used and
    what was not (points and lines, regions, outlines outside the image, overlaps, unclassified nuclei)."""
    nuclei, regions = _candidates(objects)
    pixels = [object_pixels(objects[k].outline, shape) for k in nuclei]
    instances, label_of = paint_instances(pixels, shape)
    index = {name: k for k, name in enumerate(classes, start=1)}
    class_of = np.zeros(int(instances.max()) + 1, dtype=np.int32)
    for k, label in zip(nuclei, label_of.tolist(), strict=True):
        if label:
            class_of[label] = index.get(objects[k].class_name, 0)
    tally = _tally(objects, nuclei, pixels, label_of.tolist(), shape)
    counts = {key: tally[key] for key in COUNTED}
    counts.update(objects=len(objects), nuclei=int(instances.max()), regions=len(regions))
    counts["non_polygon"] = dict(Counter(o.geometry_type for o in objects if o.outline is None))
    counts["per_class"] = {key[6:]: n for key, n in sorted(tally.items()) if key.startswith("class:")}
    return instances, class_of[instances], counts


def _read_image(path: Path) -> np.ndarray:
    try:
        return read_rgb(path)
    except TooLargeError:
        raise ConfigError(f"{path}: {SLIDE_REFUSAL}") from None


def _classes(exports: list[list[QuPathObject]]) -> tuple[list[str], dict[str, list[int]]]:
    """The class names of the nucleus outlines (sorted) and each one's QuPath colour (the first given)."""
    colours: dict[str, list[int]] = {}
    names = set()
    for objects in exports:
        for k in _candidates(objects)[0]:
            name, colour = objects[k].class_name, objects[k].colour
            if name is not None:
                names.add(name)
                if colour is not None:
                    colours.setdefault(name, list(colour))
    return sorted(names), colours


def _totals(report: dict[str, Any]) -> None:
    """Sum the per-image counts into ``report`` and name the rare classes."""
    per_image = report["per_image"].values()
    for key in ("objects", "nuclei", "regions", *COUNTED):
        report[key] = sum(counts[key] for counts in per_image)
    report["non_polygon"] = dict(sum((Counter(c["non_polygon"]) for c in per_image), Counter()))
    report["per_class"] = {name: sum(c["per_class"].get(name, 0) for c in per_image) for name in report["classes"]}
    report["rare_classes"] = {n: count for n, count in report["per_class"].items() if count < RARE_CLASS_OBJECTS}


def from_qupath(
    images: str | Path,
    geojsons: Sequence[str | Path],
    out: str | Path,
    microns_per_pixel: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert QuPath exports of ``images`` (a folder or one image) into the typed folder ``out`` and return the
    report (also written as ``out/report.json``). Images without a GeoJSON and GeoJSONs without an image are
    reported and left out; no pair at all is an error."""
    images, out = Path(images).expanduser(), Path(out).expanduser()
    if microns_per_pixel is not None and microns_per_pixel <= 0:
        raise ConfigError(f"--mpp {microns_per_pixel}: expected a positive pixel size in micrometres")
    refuse_existing(out, overwrite)
    pairs, lonely_images, lonely_exports = pair_exports(images, [Path(g).expanduser() for g in geojsons])
    if not pairs:
        raise ConfigError(
            f"{images}: no image has a GeoJSON of the same name (images without one: {lonely_images[:5]}; GeoJSONs "
            f"without an image: {lonely_exports[:5]}); expected NAME.geojson for image NAME.*"
        )
    exports = {image: read_qupath_objects(geojson) for image, geojson in pairs}
    classes, colours = _classes(list(exports.values()))
    report: dict[str, Any] = {
        "source": "qupath",
        "images": len(pairs),
        "classes": classes,
        "microns_per_pixel": microns_per_pixel,
        "images_without_geojson": lonely_images,
        "geojson_without_image": lonely_exports,
        "per_image": {},
    }

    def samples() -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        for image_path, geojson in pairs:
            image = _read_image(image_path)
            instances, types, counts = rasterise_objects(exports[image_path], image.shape[:2], classes)
            _check_inside(counts, geojson, image_path, image.shape[:2])
            report["per_image"][image_path.stem] = counts
            yield image_path.stem, image, instances, types

    def report_file() -> dict[str, bytes]:
        _totals(report)
        return {"report.json": (json.dumps(report, indent=1, sort_keys=True) + "\n").encode()}

    write_typed_folder(
        out,
        samples(),
        tuple(classes),
        microns_per_pixel,
        "qupath",
        colours=colours,
        extra_files=report_file,
        overwrite=overwrite,
    )
    return report


def _check_inside(counts: dict[str, Any], geojson: Path, image: Path, shape: tuple[int, int]) -> None:
    """Refuse an export whose outlines all miss its image: coordinates of a whole slide, or of another image."""
    outlines = counts["objects"] - sum(counts["non_polygon"].values()) - counts["regions"]
    if outlines and counts["outside_image"] == outlines:
        raise ConfigError(
            f"{geojson}: all {outlines} outlines lie outside the {shape[1]}x{shape[0]} image {image.name}: exported "
            "from a whole slide or another image? Export the objects of this image itself (its own pixel coordinates)"
        )


def summary_lines(report: dict[str, Any], out: Path) -> list[str]:
    """The report in a few lines for the terminal (``report.json`` holds it all)."""
    lines = [
        f"{report['images']} images, {report['nuclei']} nuclei of {len(report['classes'])} classes written to {out}",
        "per class: " + ", ".join(f"{name} {n}" for name, n in report["per_class"].items()),
    ]
    notes = {
        "unclassified": "nuclei without a class (class 0, unknown)",
        "overlapping": "outlines overlap another (the smaller keeps the shared pixels)",
        "covered": "outlines covered whole by smaller ones (dropped)",
        "outside_image": "outlines outside the image (dropped)",
        "no_pixel": "outlines too small to hold a pixel centre (dropped)",
        "clipped": "outlines cut by the image edge",
        "regions": "regions drawn around other objects (not nuclei, dropped)",
    }
    lines += [f"{report[key]} {text}" for key, text in notes.items() if report[key]]
    for kind, n in report["non_polygon"].items():
        reason = "points cannot be used as outlines" if "Point" in kind else "not an area"
        lines.append(f"{n} {kind} objects left out ({reason})")
    if report["rare_classes"]:
        lines.append(f"classes with fewer than {RARE_CLASS_OBJECTS} nuclei: {report['rare_classes']}")
    if report["microns_per_pixel"] is None:
        lines.append("pixel size unknown: give --mpp (a model is trained and applied at a physical resolution)")
    for key, text in (
        ("images_without_geojson", "images without a GeoJSON"),
        ("geojson_without_image", "GeoJSONs without an image"),
    ):
        if report[key]:
            lines.append(f"{len(report[key])} {text} (left out): {', '.join(report[key][:10])}")
    return lines
