"""What ``OUT/NAME/`` of ``nucleiseg predict`` holds, and whose it is.

Outputs are tied to the content of their input, the model and the settings (``done.json``, or a slide's journal
plan, records all three): :func:`folder_state` says whether a folder is new, done, resumable, another input's
or of unknown origin, and :func:`clear_outputs` removes exactly the files predict writes (``--overwrite``),
never a file of the user's."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
OUTPUTS = ("probability.tif", "mask.png", "instances.tif", "overlay.png", "nuclei.geojson", "features.csv")
DONE, IN_PROGRESS = "done.json", ".in_progress"
OWNED = (*OUTPUTS, "features.parquet", DONE, IN_PROGRESS)  # images; a slide's are SLIDE_OWNED


def owned_names() -> tuple[str, ...]:
    """Every file and folder ``predict`` writes in ``OUT/NAME/``: what ``--overwrite`` replaces, nothing else."""
    from nucleiseg.predict.slides.predict_slide import SLIDE_OWNED

    return tuple(dict.fromkeys(OWNED + SLIDE_OWNED))


def clear_outputs(folder: Path) -> list[str]:
    """Remove what predict wrote in ``folder``; return the names of files it did not write (kept, and said)."""
    import shutil

    if not folder.is_dir():
        return []
    owned = set(owned_names())
    for name in owned:
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    kept = sorted(p.name for p in folder.iterdir() if p.name not in owned and not p.name.startswith(".nucleiseg"))
    if kept:
        log.warning("%s: kept %s, not written by nucleiseg predict", folder, ", ".join(kept))
    return kept


@dataclass(frozen=True)
class State:
    """What ``OUT/NAME/`` holds for one input: ``new``, ``done`` (by the same input, model and settings),
    ``interrupted`` (resumable), ``other`` (another input, model or settings: ``why``) or ``foreign``."""

    kind: str
    why: str = ""


def folder_state(folder: Path, fingerprint: str, identity: dict, labels: bool = False) -> State:
    """Whether ``folder``'s outputs were made from this input (its content, not its name), by this model with
    these settings; ``labels``: a finished slide without ``labels.tif`` is resumed to add it."""
    from nucleiseg.predict.slides.journal import JOURNAL

    done = folder / DONE
    if done.is_file():
        return _finished_state(done, fingerprint, identity, labels)
    plan = folder / JOURNAL / "plan.json"
    if plan.is_file():
        return _journal_state(plan, fingerprint, identity)
    if (folder / IN_PROGRESS).exists():
        return State("foreign", "left unfinished by an earlier version")
    if folder.is_dir() and any((folder / name).exists() for name in owned_names()):
        return State("foreign", "of unknown origin")
    return State("new")


def _recorded(path: Path, fingerprint: str, identity: dict, unreadable: str, made: tuple[str, str]) -> dict | State:
    """The record at ``path`` (``done.json`` or a journal plan) if it was made from this input by this model and
    settings; else the folder's :class:`State`: ``foreign`` when it cannot be read, ``other`` with the reason,
    worded ``made[0] + " another input"`` / ``made[1] + " another model or other settings"``."""
    from nucleiseg.predict.input_identity import describe_input, same_input

    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return State("foreign", f"of unknown origin (unreadable {unreadable})")
    if not same_input(record.get("input"), identity):
        return State("other", f"{made[0]} another input: {describe_input(record.get('input'))}")
    if record.get("fingerprint") != fingerprint:
        return State("other", f"{made[1]} another model or other settings")
    return record


def _finished_state(done: Path, fingerprint: str, identity: dict, labels: bool) -> State:
    """A folder with ``done.json``: ``done``, ``interrupted`` (a slide finished without ``labels.tif`` when
    ``labels`` asks for it), ``other`` or ``foreign``."""
    record = _recorded(done, fingerprint, identity, "done.json", ("made from", "made by"))
    if isinstance(record, State):
        return record
    if labels and "slide" in record and "labels.tif" not in record.get("outputs", []):
        return State("interrupted")
    return State("done")


def _journal_state(plan: Path, fingerprint: str, identity: dict) -> State:
    """A folder holding a slide's unfinished windows (journal ``plan``): ``interrupted``, ``other`` or ``foreign``."""
    unfinished = "holds unfinished windows of"
    record = _recorded(plan, fingerprint, identity, "journal", (unfinished, unfinished))
    return record if isinstance(record, State) else State("interrupted")
