"""Atomic file writing: a temporary name in the same folder, then a rename, so no reader sees half a file; and
the in-memory encoders (PNG, TIFF) whose bytes are written that way."""

from __future__ import annotations

import io
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename. The file gets the
    permissions of any new file (0666 less the umask), so colleagues on a shared server can read what the
    umask lets them (``tempfile.mkstemp`` would make it private, 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, payload: Any) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode())


def install_files(scratch: Path, folder: Path, names: Iterable[str], stale: Iterable[str] = ()) -> None:
    """Move the finished files ``names`` of ``scratch`` into ``folder`` (same file system: each a rename) after
    removing ``stale``, the files of an earlier result that the new one does not replace. Files of ``folder`` in
    neither list are not touched; the caller writes its record (``done.json``, a marker) last."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(names)
    for name in set(stale) - set(names):
        (folder / name).unlink(missing_ok=True)
    for name in names:
        os.replace(scratch / name, folder / name)


def png_bytes(array: np.ndarray) -> bytes:
    """``uint8 HxW`` or ``HxWx3`` as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray) -> bytes:
    """Any array as zlib-compressed TIFF bytes (float32 probabilities, int32 labels)."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression="zlib")
    return buffer.getvalue()


class atomic_stream:  # noqa: N801 - used like open()
    """``with atomic_stream(path, "w") as handle:`` writes a large file piece by piece under a temporary name
    and renames it into place only when the block ends without an error (permissions as for a new file)."""

    def __init__(self, path: str | Path, mode: str = "w") -> None:
        self.path = Path(path)
        self.mode = mode
        self.temporary = self.path.parent / f".{self.path.name}.{secrets.token_hex(6)}.tmp"

    def __enter__(self) -> IO[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.temporary, self.mode.replace("w", "x"))  # closed in __exit__
        return self.handle

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.handle.close()
        if kind is None:
            os.replace(self.temporary, self.path)
        else:
            self.temporary.unlink(missing_ok=True)
