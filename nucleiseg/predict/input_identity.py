"""What an input file is, so outputs are tied to it: "already done" is never said of another file.

A file is identified by its size and the SHA-256 of its whole content, read in 1 MiB blocks (a 3 GB slide takes a
few seconds). Earlier versions hashed a sample of files over 64 MiB, and two different slides could share it (a
108 MB TIFF with 1.9 M pixels changed between the samples was taken for the first): no sampling any more. So that
re-runs over a cohort stay fast, the hash is cached by the file's identity on disk (resolved path, device, inode,
size, modification and status-change times: any write or replacement changes the last one, which no copy tool
can set back) in ``NUCLEISEG_CACHE/input-hashes.sqlite``. Path and modification time are recorded for people, not
compared: the same file moved or copied is the same input, another file under the same name is not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
BLOCK = 1 << 20
CACHE_NAME = "input-hashes.sqlite"


def _cache_path() -> Path:
    return Path(os.environ.get("NUCLEISEG_CACHE", Path.home() / ".cache" / "nucleiseg")).expanduser() / CACHE_NAME


def _key(path: Path, info: os.stat_result) -> tuple:
    return (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _cached(key: tuple) -> str | None:
    try:
        with sqlite3.connect(_cache_path(), timeout=30) as db:
            row = db.execute(
                "SELECT sha256 FROM hashes WHERE path=? AND dev=? AND ino=? AND size=? AND mtime=? AND ctime=?", key
            ).fetchone()
        return row[0] if row else None
    except sqlite3.Error:  # no cache yet, or one we cannot read: hash the file
        return None


def _remember(key: tuple, sha256: str) -> None:
    try:
        _cache_path().parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(_cache_path(), timeout=30) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, dev INT, ino INT, size INT, mtime INT, "
                "ctime INT, sha256 TEXT)"
            )
            db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", (*key, sha256))
    except (OSError, sqlite3.Error) as error:  # a read-only cache only costs the next run the hashing again
        log.debug("input hash not cached (%s)", error)


def file_sha256(path: Path) -> str:
    """SHA-256 of the whole file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(BLOCK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_identity(path: str | Path) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns", "sha256", "hashed"}`` of a file (``hashed``: ``whole``)."""
    path = Path(path).resolve()
    info = path.stat()
    key = _key(path, info)
    sha256 = _cached(key)
    if sha256 is None:
        sha256 = file_sha256(path)
        if path.stat().st_ctime_ns == info.st_ctime_ns:  # not changed while it was read
            _remember(key, sha256)
    return {"path": str(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha256, "hashed": "whole"}


def same_input(recorded: Mapping[str, Any] | None, identity: Mapping[str, Any]) -> bool:
    """Whether ``recorded`` (from a journal or done.json) names the same content as ``identity``. A record made
    from a sample of the file (versions before 2026-12) is never taken for the same content."""
    if not recorded:
        return False
    return all(recorded.get(key) == identity[key] for key in ("size", "sha256", "hashed"))


def describe_input(recorded: Mapping[str, Any] | None) -> str:
    """``/data/A/s.tif (12.3 MB, sha256 1a2b3c4d...)`` for messages; outputs of older versions named no input."""
    if not recorded:
        return "an input this version did not record"
    described = (
        f"{recorded.get('path')} ({recorded.get('size', 0) / 1e6:.1f} MB, sha256 {str(recorded.get('sha256'))[:12]}"
    )
    if recorded.get("hashed") == "sampled":
        return described + ", identified by a sample of its bytes by an older version: it cannot be told apart)"
    return described + ")"
