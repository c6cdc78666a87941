"""The folder a report writes into: which files are the report's own (a marker lists them), so ``--overwrite``
replaces an earlier report's files and never anything else, and the new files are installed all at once."""

from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path

from nucleiseg.tracking.study import ReportError
from nucleiseg.util.writing import install_files, write_json_atomic

log = logging.getLogger(__name__)


MARKER = ".nucleiseg-report.json"  # which files of its folder the report wrote: what --overwrite may replace
TABLE_FILES = {  # the CSV tables the report writes, by table
    "table2": "table2_losses.csv",
    "table3": "table3_metrics.csv",
    "instances": "table4_instances.csv",
    "agreement": "rank_agreement.csv",
    "spread": "spread_sources.csv",
    "splits": "splits.csv",
    "tuned": "tuned_postprocess.csv",
    "heads": "table5_heads.csv",
    "head_ranking": "table6_head_ranking.csv",
    "classes": "table7_classes.csv",
}
FIGURES = {"train": "fig7_train_loss", "val": "fig8_val_loss", "predictions": "fig9_predictions"}  # + .png, .svg
# what a report (this version's or an earlier one's) writes: the only names a marker may make --overwrite remove
OWN_FILES = ("report.md", "claims.csv", "runs.csv", *TABLE_FILES.values())
OWN_PATTERNS = ("table*.csv", "fig*.png", "fig*.svg")


def own_file(out: Path, name: object) -> bool:
    """Whether ``name`` (an entry of a marker) is a file the report writes, directly inside ``out`` (``out``
    resolved): a plain file name of the report's, not a path, and not a link that leads out of ``out``."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        return False
    if name not in OWN_FILES and not any(fnmatch.fnmatchcase(name, pattern) for pattern in OWN_PATTERNS):
        return False
    path = out / name
    return path.resolve().parent == out and (path.is_file() or not path.exists()) and not path.is_symlink()


def check_out(out: Path, overwrite: bool) -> list[str]:
    """The files an earlier report wrote in ``out`` (which ``overwrite`` replaces, leaving any other file there);
    refuses a non-empty folder without ``overwrite``, and with it a folder no report created (``--out .
    --overwrite`` never empties the current folder). The marker is not trusted: an entry that is not a file the
    report writes, directly in ``out`` (a path, another name, a link), is ignored with a warning."""
    if not out.exists() or not any(out.iterdir()):
        return []
    if not overwrite:
        raise ReportError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    marker = out / MARKER
    if not marker.is_file():
        found = sorted(p.name for p in out.iterdir())
        shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
        raise ReportError(
            f"{out} was not created by nucleiseg report (it holds {shown}); --overwrite replaces only an earlier "
            "report's files: choose a new or empty --out"
        )
    try:
        listed = json.loads(marker.read_text()).get("files", [])
    except (ValueError, AttributeError, OSError):
        listed = None
    if not isinstance(listed, list):
        log.warning("%s: not a list of the report's files; no earlier file is removed", marker)
        return []
    own = [name for name in listed if own_file(out, name)]
    ignored = [repr(name) if not isinstance(name, str) else name for name in listed if name not in own]
    if ignored:
        log.warning(
            "%s names files the report does not write in %s, or links out of it: %s; left alone",
            marker,
            out,
            ", ".join(ignored[:20]) + (" ..." if len(ignored) > 20 else ""),
        )
    return own


def install(scratch: Path, out: Path, earlier: list[str]) -> None:
    """Move the new report's files into ``out`` (the earlier report's files replaced or removed, nothing else
    touched), the marker last."""
    files = sorted(p.name for p in scratch.iterdir())
    install_files(scratch, out, files, stale=earlier)
    write_json_atomic(out / MARKER, {"files": files})
