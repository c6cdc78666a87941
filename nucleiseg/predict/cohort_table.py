"""A cohort's list of slides, its state on disk and its table (:mod:`nucleiseg.predict.cohort` runs the slides).

- :func:`read_cohort`: the slides of folders, files, glob patterns and CSV lists (``path``, optional ``roi``;
  relative paths relative to the CSV's folder), one entry per slide (its resolved path), the slides that cannot
  be predicted (missing files) as problems, the lines that name a slide again as warnings.
- ``OUT/.cohort/slides.json``: the slides of the last run (each keyed by its resolved path, with its output
  folder) and every output folder the cohort has given a slide, so a slide keeps its folder from run to run.
- ``OUT/.cohort/rows/``: one row per slide, written as the slide finishes (by any shard).
- ``OUT/cohort.csv`` (+ ``cohort.parquet``): rebuilt from the rows, one line per slide of the last run: its
  current state (``pending`` until a shard has recorded it).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nucleiseg.util.errors import ConfigError, first_line

STATE = ".cohort"
SLIDES = "slides.json"
TABLE_COLUMNS = [
    "slide",
    "folder",
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


def slide_key(path: str | Path) -> str:
    """What a slide's row is keyed by: its resolved absolute path, the same however the list names the file."""
    return str(Path(path).expanduser().resolve())


@dataclass(frozen=True)
class Entry:
    """One slide of a cohort: its file (absolute, as listed: a link keeps its own name), its regions of interest,
    and its output folder's name under the cohort's folder (given by :func:`nucleiseg.predict.cohort.run_cohort`)."""

    path: Path
    roi: Path | None = None
    folder: str = ""

    @property
    def key(self) -> str:
        """The slide's resolved path: what its row is keyed by."""
        return slide_key(self.path)


@dataclass(frozen=True)
class Problem:
    """A listed slide that cannot be predicted (a failed row of the table): what the table calls it, its key, why."""

    slide: str
    key: str
    reason: str


@dataclass
class CohortList:
    """The slides of a cohort's list: those to predict, those that cannot be (missing files, conflicting lines),
    and warnings (a slide listed more than once, predicted once)."""

    entries: list[Entry]
    problems: list[Problem]
    warnings: list[str]


@dataclass(frozen=True)
class _Listed:
    """A slide as one place of the list names it (``origin``: ``line 3 of cohort.csv``, ``folder slides/`` ...)."""

    path: Path
    origin: str
    roi: Path | None = None
    problem: str = ""


def read_cohort(inputs: list[str]) -> CohortList:
    """The slides named by folders, files, glob patterns and CSV lists (``path`` column, optional ``roi``; relative
    paths are relative to the CSV's folder). Missing slides and region files are problems of their slides, a slide
    listed twice is one slide with a warning: never fatal to the others."""
    from nucleiseg.predict.run import INPUT_SUFFIXES

    listed: list[_Listed] = []
    problems: list[Problem] = []
    for word in inputs:
        path = Path(word).expanduser()
        if path.suffix.lower() == ".csv" and path.is_file():
            listed += _csv_slides(path, problems)
        elif path.is_dir():
            found = [p for p in sorted(path.iterdir()) if p.suffix.lower() in INPUT_SUFFIXES and p.is_file()]
            listed += [_Listed(p.absolute(), f"folder {word}") for p in found]
        elif any(character in word for character in "*?["):
            found = [Path(p) for p in sorted(glob.glob(os.path.expanduser(word), recursive=True))]
            listed += [_Listed(p.absolute(), f"pattern {word}") for p in found if p.is_file()]
            if not any(p.is_file() for p in found):
                problems.append(Problem(word, word, "the pattern matches no file"))
        else:
            missing = "" if path.is_file() else "no such file or folder"
            listed.append(_Listed(path.absolute(), f"argument {word}", problem=missing))
    return _one_per_slide(listed, problems)


def _csv_records(listing: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a CSV list of slides (header line 1; blank lines skipped)."""
    try:
        with listing.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            if "path" not in columns:
                raise ConfigError(f"{listing}: no 'path' column (found {', '.join(columns)}); expected path[,roi]")
            reader.fieldnames = columns
            return [(reader.line_num, row) for row in reader]
    except (csv.Error, UnicodeDecodeError) as error:
        raise ConfigError(f"{listing}: not a readable CSV list of slides ({first_line(error)})") from None


def _csv_slides(listing: Path, problems: list[Problem]) -> list[_Listed]:
    """The slides of a CSV list: relative paths (slides and regions) are relative to the CSV's folder."""
    folder = listing.absolute().parent
    slides = []
    for line, record in _csv_records(listing):
        origin = f"line {line} of {listing.name}"
        word, region = (record.get("path") or "").strip(), (record.get("roi") or "").strip()
        if not word:
            problems.append(Problem(f"{listing.name}:{line}", f"{slide_key(listing)}:{line}", f"empty path ({origin})"))
            continue
        slide = folder / Path(word).expanduser()  # an absolute path stays as it is
        roi = folder / Path(region).expanduser() if region else None
        problem = ""
        if not slide.is_file():
            problem = f"no such file ({origin})"
        elif roi is not None and not roi.is_file():
            problem = f"region file {roi} not found ({origin})"
        slides.append(_Listed(slide, origin, roi, problem))
    return slides


def _one_per_slide(listed: list[_Listed], problems: list[Problem]) -> CohortList:
    """One entry per slide (its resolved path): a slide listed several times is one slide, with a warning naming
    where; it fails when one of its lines has a problem, or when its lines give it different regions."""
    by_slide: dict[str, list[_Listed]] = {}
    for item in listed:
        by_slide.setdefault(slide_key(item.path), []).append(item)
    entries, warnings = [], []
    for key, lines in by_slide.items():
        first = lines[0]
        if len(lines) > 1:
            where = "; ".join(line.origin for line in lines)
            warnings.append(f"{first.path}: listed {len(lines)} times ({where}); one slide, predicted once")
        problem = next((line.problem for line in lines if line.problem), "")
        if not problem and len({slide_key(line.roi) if line.roi else "" for line in lines}) > 1:
            given = "; ".join(f"{line.roi or 'no regions'} ({line.origin})" for line in lines)
            problem = f"listed with different regions ({given}); give one set of regions per slide"
        if problem:
            problems.append(Problem(first.path.name, key, problem))
        else:
            entries.append(Entry(first.path, first.roi))
    return CohortList(entries, problems, warnings)


def _short_hash(key: str, digits: int = 8) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:digits]


def assign_folders(out: Path, slides: list[tuple[str, str]]) -> dict[str, str]:
    """Each slide's output folder under ``out``, from ``(key, name)`` pairs (``name``: the folder predict would
    use, the file's stem): ``name`` when no other slide of the list, nor one the cohort gave it to before, has it;
    else ``name-<first 8 hex of the SHA-256 of the key>``. A slide keeps the folder an earlier run gave it."""
    given = dict(_read_state(out).get("folders", {}))
    owners = {folder: key for key, folder in given.items()}
    names = Counter(name for _, name in slides)
    folders: dict[str, str] = {}
    for key, name in slides:
        if key in given:
            folders[key] = given[key]
            continue
        folder = name if names[name] == 1 and owners.get(name, key) == key else f"{name}-{_short_hash(key)}"
        if owners.get(folder, key) != key:  # a slide's own name that looks like a hashed one: longer hash
            folder = f"{name}-{_short_hash(key, 16)}"
        owners[folder], folders[key] = key, folder
    return folders


def record_listing(out: Path, listed: list[dict[str, str]], folders: dict[str, str]) -> None:
    """Keep the slides of this run (``{"path": key, "slide": name, "folder": ...}``) and every folder given."""
    from nucleiseg.util.writing import write_json_atomic

    given = {**_read_state(out).get("folders", {}), **folders}
    write_json_atomic(out / STATE / SLIDES, {"listed": listed, "folders": given})


def _read_state(out: Path) -> dict[str, Any]:
    path = out / STATE / SLIDES
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, OSError):
        return {}


def slide_row(
    folder: Path, slide: str, key: str, roi: Path | None, status: str, reason: str, model: str, model_sha: str
) -> dict[str, Any]:
    """The line of slide ``slide`` (keyed ``key``, regions ``roi``) in the cohort table, from its output
    ``folder`` (``slide.json``, ``features.csv``)."""
    import numpy as np
    import pandas as pd

    row: dict[str, Any] = {
        "slide": slide,
        "folder": folder.name,
        "path": key,
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
        for name, count in (info.get("nuclei_by_class") or {}).items():  # a typed model: each class's count, density
            key = class_column(name)
            row[f"nuclei_{key}"] = int(count)
            if row.get("tissue_mm2"):
                row[f"{key}_per_mm2"] = count / row["tissue_mm2"]
    return row


def class_column(name: str) -> str:
    """A class name as a column name: ``Immune cells`` -> ``immune_cells``."""
    return "_".join(str(name).lower().split()).replace("-", "_")


def record_row(out: Path, row: dict[str, Any], rebuild: bool = True) -> None:
    """Keep a slide's row under ``OUT/.cohort/rows/`` (one file per key: a later row replaces it) and, with
    ``rebuild``, rebuild the table with it."""
    from nucleiseg.util.writing import write_json_atomic

    write_json_atomic(out / STATE / "rows" / f"{_short_hash(row['path'], 24)}.json", row)
    if rebuild:
        write_table(out)


def recorded_keys(out: Path, launch: str) -> set[str]:
    """The slides whose rows this run of the cohort (``launch``) has recorded."""
    return {key for key, row in _rows(out).items() if row.get("launch") == launch}


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    """The recorded rows by key, the latest one of a key winning (rows of earlier versions were named otherwise)."""
    files = []
    for path in (out / STATE / "rows").glob("*.json"):
        try:
            files.append((path.stat().st_mtime_ns, path))
        except OSError:  # replaced by another shard right now
            continue
    rows: dict[str, dict[str, Any]] = {}
    for _, path in sorted(files):
        try:
            row = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):  # being replaced by another shard right now
            continue
        rows[row["path"]] = row
    return rows


def current_rows(out: Path) -> list[dict[str, Any]]:
    """One row per slide of the last run, in its current state (``pending``: no shard has recorded it yet);
    every recorded row when no run has listed its slides (a cohort folder of an earlier version)."""
    rows = _rows(out)
    listed = _read_state(out).get("listed")
    if listed is None:
        return list(rows.values())
    pending = {"status": "pending", "reason": "not predicted yet"}
    return [rows.get(slide["path"]) or {**slide, **pending} for slide in listed]


def write_table(out: Path) -> Path:
    """Rebuild ``cohort.csv`` (+ ``cohort.parquet`` with pyarrow) from the slides' rows, atomically."""
    import importlib.util
    import io

    import pandas as pd

    from nucleiseg.util.writing import write_bytes_atomic

    rows = current_rows(out)
    by_class = sorted({key for row in rows for key in row if key not in TABLE_COLUMNS})  # a typed model's classes
    table = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, *by_class]).sort_values(["slide", "path"], kind="stable")
    write_bytes_atomic(out / "cohort.csv", table.to_csv(index=False).encode())
    if importlib.util.find_spec("pyarrow") is not None:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        write_bytes_atomic(out / "cohort.parquet", buffer.getvalue())
    return out / "cohort.csv"
