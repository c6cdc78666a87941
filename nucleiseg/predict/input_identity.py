"""What an input file is, so outputs are tied to it: "already done" is never said of another file.

A file is identified by its size and a SHA-256 of its content: the whole file when it is small (under
:data:`WHOLE_LIMIT`), else a sample that a different slide cannot share by chance (its first and last 4 MiB,
which hold a TIFF's header, its tile offsets and byte counts, and 16 blocks of 64 KiB spread over the rest), read
in well under a second even on a network share. Path and modification time are recorded for people, not compared:
the same file moved or copied is the same input, another file under the same name is not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WHOLE_LIMIT = 64 * 2**20
EDGE = 4 * 2**20
BLOCK, BLOCKS = 64 * 2**10, 16


def input_identity(path: str | Path) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns", "sha256", "hashed"}`` of a file (``hashed``: ``whole`` or ``sampled``)."""
    path = Path(path)
    info = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if info.st_size <= WHOLE_LIMIT:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
            hashed = "whole"
        else:
            digest.update(handle.read(EDGE))
            step = (info.st_size - 2 * EDGE) // (BLOCKS + 1)
            for k in range(1, BLOCKS + 1):
                handle.seek(EDGE + k * step)
                digest.update(handle.read(BLOCK))
            handle.seek(info.st_size - EDGE)
            digest.update(handle.read(EDGE))
            hashed = "sampled"
    return {
        "path": str(path.resolve()),
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "sha256": digest.hexdigest(),
        "hashed": hashed,
    }


def same_input(recorded: Mapping[str, Any] | None, identity: Mapping[str, Any]) -> bool:
    """Whether ``recorded`` (from a journal or done.json) names the same content as ``identity``."""
    if not recorded:
        return False
    return all(recorded.get(key) == identity[key] for key in ("size", "sha256", "hashed"))


def describe_input(recorded: Mapping[str, Any] | None) -> str:
    """``/data/A/s.tif (12.3 MB, sha256 1a2b3c4d...)`` for messages; outputs of older versions named no input."""
    if not recorded:
        return "an input this version did not record"
    return f"{recorded.get('path')} ({recorded.get('size', 0) / 1e6:.1f} MB, sha256 {str(recorded.get('sha256'))[:12]})"
