"""The cohort table: one row per slide, kept under ``OUT/.cohort/rows/`` as slides finish (by any shard) and
rebuilt into ``OUT/cohort.csv`` (+ ``cohort.parquet``) from them (:mod:`nucleiseg.predict.cohort` runs the slides)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE = ".cohort"
TABLE_COLUMNS = [
    "slide",
    "path",
    "status",
    "reason",
    "tissue_mm2",
    "nuclei",
    "nuclei_per_mm2",
    "mean_area_um2",
    "median_area_um2",
    "seconds",
    "model",
    "model_sha256",
    "roi",
    "regions",
]


def slide_row(
    out: Path, path: Path, roi: Path | None, status: str, reason: str, model: str, model_sha: str
) -> dict[str, Any]:
    """The line of slide ``path`` (regions ``roi``) in the cohort table, from its output folder (``slide.json``,
    ``features.csv``)."""
    import numpy as np
    import pandas as pd

    from nucleiseg.predict.run import output_name

    folder = out / output_name(path)
    row: dict[str, Any] = {
        "slide": path.name,
        "path": str(path.resolve()),
        "status": status,
        "reason": reason,
        "model": model,
        "model_sha256": model_sha,
        "roi": str(roi) if roi else "",
    }
    if status in ("finished", "skipped") and (folder / "done.json").is_file():
        done = json.loads((folder / "done.json").read_text())
        info = json.loads((folder / "slide.json").read_text()) if (folder / "slide.json").is_file() else {}
        row["nuclei"] = int(done["n_nuclei"])
        row["seconds"] = float(info.get("seconds_this_session", done.get("seconds", float("nan"))))
        mpp, dimensions = info.get("microns_per_pixel"), info.get("dimensions")
        if mpp and dimensions:
            row["tissue_mm2"] = info["tissue_fraction"] * dimensions[0] * dimensions[1] * mpp**2 / 1e6
            row["nuclei_per_mm2"] = row["nuclei"] / row["tissue_mm2"] if row["tissue_mm2"] else float("nan")
        features = folder / "features.csv"
        if features.is_file() and row["nuclei"]:
            areas = pd.read_csv(features, usecols=lambda c: c == "area_um2").get("area_um2")
            if areas is not None and len(areas):
                row["mean_area_um2"], row["median_area_um2"] = float(areas.mean()), float(np.median(areas))
        if "regions" in info:
            row["regions"] = json.dumps(info["regions"], sort_keys=True)
    return row


def record_row(out: Path, row: dict[str, Any]) -> None:
    """Keep a slide's row under ``OUT/.cohort/rows/`` and rebuild the table with it."""
    from nucleiseg.util.writing import write_json_atomic

    key = row["path"].replace("/", "_").replace("\\", "_")[-180:]
    write_json_atomic(out / STATE / "rows" / f"{key}.json", row)
    write_table(out)


def write_table(out: Path) -> Path:
    """Rebuild ``cohort.csv`` (+ ``cohort.parquet`` with pyarrow) from the slides' rows, atomically."""
    import importlib.util
    import io

    import pandas as pd

    from nucleiseg.util.writing import write_bytes_atomic

    rows = []
    for path in sorted((out / STATE / "rows").glob("*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, OSError):  # being replaced by another shard right now
            continue
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS).sort_values("slide", kind="stable")
    write_bytes_atomic(out / "cohort.csv", table.to_csv(index=False).encode())
    if importlib.util.find_spec("pyarrow") is not None:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        write_bytes_atomic(out / "cohort.parquet", buffer.getvalue())
    return out / "cohort.csv"
