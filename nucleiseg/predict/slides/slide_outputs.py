"""A slide's outputs, streamed from its journal: ``nuclei.geojson`` (QuPath), ``features.csv`` (+ Parquet),
``tissue.png``, ``overview.png``, optionally ``labels.tif``, and the counts for ``slide.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nucleiseg.inference.export import class_colour
from nucleiseg.predict.slides.plan import Plan, SlideSettings, slide_columns
from nucleiseg.predict.slides.reader import Slide
from nucleiseg.util.writing import png_bytes, write_bytes_atomic

if TYPE_CHECKING:
    from nucleiseg.predict.slides.journal import Journal
    from nucleiseg.predict.slides.roi import Regions

log = logging.getLogger(__name__)


def assemble(
    folder: Path,
    slide: Slide,
    plan: Plan,
    journal: Journal,
    thumbnail: np.ndarray,
    thumb_downsample: float,
    mask: np.ndarray,
    settings: SlideSettings,
    roi: Regions | None = None,
    classes: list[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Stream the journal into the slide's outputs; returns counts for ``slide.json`` and the files written.
    ``classes``: a typed model's classes (each nucleus's class is its table row's ``type``)."""
    from nucleiseg.util.writing import atomic_stream

    input_sha256 = ((journal.state() or {}).get("input") or {}).get("sha256")
    offsets: dict[int, int] = {}
    centres: list[np.ndarray] = []
    per_region: dict[str, int] = dict.fromkeys(roi.names, 0) if roi is not None else {}
    classes = list(classes or [])
    by_class = {"": dict.fromkeys(classes, 0)} | (
        {name: dict.fromkeys(classes, 0) for name in roi.names} if roi else {}
    )
    total, touching, first = 0, 0, True
    parquet = _ParquetRows(folder / "features.parquet")
    with atomic_stream(folder / "nuclei.geojson") as geojson, atomic_stream(folder / "features.csv") as table:
        geojson.write('{"type":"FeatureCollection","features":[')
        for entry in journal.entries():
            offsets[entry["index"]] = total
            rows = pd.DataFrame(entry["rows"])
            if len(rows):
                rows.insert(0, "nucleus_id", total + rows.pop("local_id"))
                rows.insert(0, "image", slide.path.stem)
                for feature, row in zip(entry["features"], rows.to_dict("records"), strict=True):
                    _complete(feature, row, classes, input_sha256)
                    geojson.write(("" if first else ",") + json.dumps(feature, separators=(",", ":")))
                    first = False
                table.write(rows.to_csv(index=False, header=total == 0))
                _count_in_regions(roi, rows, per_region, by_class)
                parquet.append(rows)
                centres.append(rows[["centroid_x", "centroid_y"]].to_numpy())
            total += entry["n"]
            touching += entry.get("touching_edge", 0)
        geojson.write("]}")
        if total == 0:
            table.write(",".join(slide_columns(plan, roi is not None)) + "\n")
    outputs = ["nuclei.geojson", "features.csv", "tissue.png", "overview.png"]
    if parquet.close():
        outputs.append("features.parquet")
    write_bytes_atomic(folder / "tissue.png", png_bytes((mask * 255).astype(np.uint8)))
    write_bytes_atomic(folder / "overview.png", png_bytes(_overview(thumbnail, thumb_downsample, centres)))
    if settings.labels:
        from nucleiseg.predict.slides.labels import write_labels

        write_labels(folder / "labels.tif", slide, plan, journal, offsets)
        outputs.append("labels.tif")
    if touching:
        log.warning(
            "%s: %d nuclei touch the edge of their window's context: nuclei larger than slide.margin=%d model pixels "
            "may be cut; raise slide.margin",
            slide.path,
            touching,
            round(plan.margin * plan.resize),
        )
    counts: dict[str, Any] = {"n_nuclei": total, "nuclei_touching_window_edge": touching}
    if classes:
        counts["nuclei_by_class"] = by_class[""]
    if roi is not None:
        counts.update(_region_counts(roi, per_region, plan.slide_mpp, by_class if classes else None))
    return counts, outputs


def _complete(feature: dict[str, Any], row: dict[str, Any], classes: list[str], input_sha256: str | None) -> None:
    """A window's GeoJSON feature completed with what the whole slide knows: its measurements, its slide-wide id
    (stable across runs) and, for a typed model, its class in its colour."""
    from nucleiseg.inference.export import nucleus_uuid

    skip = ("window", "image", "region", "type")
    feature["properties"]["measurements"] = {k: float(v) for k, v in row.items() if k not in skip}
    if row.get("type") in classes:
        colour = list(class_colour(classes.index(row["type"]) + 1))
        feature["properties"]["classification"] = {"name": row["type"], "color": colour}
    feature["id"] = nucleus_uuid(input_sha256, row["nucleus_id"])


def _count_in_regions(
    roi: Regions | None, rows: pd.DataFrame, per_region: dict[str, int], by_class: dict[str, dict[str, int]]
) -> None:
    """Add a window's nuclei to every region that holds their centroid (regions may nest or overlap), and, for a
    typed model, to the counts per class of the slide and of each region (``by_class[""]``: the slide's)."""
    if "type" in rows:
        for kind, count in rows["type"].value_counts().items():
            if kind in by_class[""]:
                by_class[""][kind] += int(count)
    if roi is None:
        return
    held = roi.memberships(rows["centroid_x"].to_numpy(), rows["centroid_y"].to_numpy())
    for index, (name, count) in enumerate(zip(roi.names, held.sum(axis=0), strict=True)):
        per_region[name] += int(count)
        if "type" in rows:
            for kind, n in rows["type"][held[:, index]].value_counts().items():
                if kind in by_class[name]:
                    by_class[name][kind] += int(n)


def _region_counts(
    roi: Regions, per_region: dict[str, int], mpp: float | None, by_class: dict[str, dict[str, int]] | None
) -> dict[str, Any]:
    """``slide.json``'s ``regions`` (nuclei, area and density of each; for a typed model the same per class, e.g.
    inflammatory nuclei per mm^2 of a tumour annotation) and ``region_notes``."""
    from nucleiseg.predict.typed import class_densities

    areas = roi.areas_um2(mpp)
    counts: dict[str, Any] = {"regions": {}}
    for name in roi.names:
        area = areas[name] / 1e6 if areas[name] is not None else None
        counts["regions"][name] = {
            "nuclei": per_region[name],
            "area_mm2": area,
            "nuclei_per_mm2": per_region[name] / area if area else None,
        }
        if by_class is not None:
            counts["regions"][name]["by_class"] = class_densities(by_class[name], area)
    if roi.notes:
        counts["region_notes"] = list(roi.notes)
    return counts


def _overview(thumbnail: np.ndarray, downsample: float, centres: list[np.ndarray]) -> np.ndarray:
    """The low-resolution view with a yellow dot on every nucleus found."""
    overview = thumbnail.copy()
    if centres:
        points = np.concatenate(centres) / downsample
        cols = np.clip(points[:, 0].astype(int), 0, overview.shape[1] - 1)
        rows = np.clip(points[:, 1].astype(int), 0, overview.shape[0] - 1)
        overview[rows, cols] = (255, 230, 0)
    return overview


class _ParquetRows:
    """features.parquet written window by window (with pyarrow; skipped without it)."""

    def __init__(self, path: Path) -> None:
        self.path, self.writer, self.temporary = path, None, None
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            self.path = None

    def append(self, rows: pd.DataFrame) -> None:
        if self.path is None:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(rows, preserve_index=False)
        if self.writer is None:
            self.temporary = self.path.with_name(f".{self.path.name}.tmp")
            self.writer = pq.ParquetWriter(self.temporary, table.schema)
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self) -> bool:
        """Finish the file; whether one was written (a slide without nuclei gets none: its CSV has the header)."""
        if self.writer is None:
            return False
        import os

        self.writer.close()
        os.replace(self.temporary, self.path)
        return True
