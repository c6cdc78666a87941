"""Open a dataset given as a folder or as the zip archive the user downloaded.

An archive is checked before anything is written: no member may point outside the target (zip-slip), declare more
than :data:`MAX_MEMBER_BYTES` or compress more than :data:`MAX_RATIO` to 1 (zip bombs; zipfile itself refuses
overlapping members), and all of it must fit the target's free space and :data:`MAX_TOTAL_BYTES`. Members are then
streamed out in blocks, each under a temporary name renamed into place when complete, never read whole into memory.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nucleiseg.util.errors import DatasetLayoutError
from nucleiseg.util.writing import atomic_stream

# The largest member of a dataset nucleiseg reads is PanNuke's masks.npy (2,656 x 256 x 256 x 6 float64: 8.4 GB);
# twice that for one member, and 64 GB for an archive, hold every release we know with room to spare. What an
# archive may unpack to is also held to the free space of its target: zipfile never writes more than a member declares.
MAX_MEMBER_BYTES = 16_000_000_000
MAX_TOTAL_BYTES = 64_000_000_000
# Deflate cannot compress better than about 1032:1, which a file of one repeated byte reaches: a member compressed
# more than 1000:1 is such a file or has headers that lie (a zip bomb). Sparse label arrays compress well but not
# that well (a PanNuke-like masks array measured 270:1), images a few times. Members under RATIO_FLOOR_BYTES may
# compress as they like (XML, a blank mask): they cannot fill a disk.
MAX_RATIO = 1000
RATIO_FLOOR_BYTES = 16_000_000
BLOCK = 1 << 20


@contextmanager
def dataset_folder(root: str | Path, dataset: str | None = None) -> Iterator[Path]:
    """Yield a folder for ``root``: the folder itself, or a zip safely extracted to a temporary folder."""
    root = Path(root).expanduser()
    if not root.exists():
        hint = (
            f"; download it with `nucleiseg data download {dataset} --to {root.parent}` or point "
            f"data.sources.{dataset}.root at your copy"
            if dataset
            else ""
        )
        raise FileNotFoundError(f"{root}: dataset root not found{hint}")
    if root.is_dir():
        yield root
        return
    if not zipfile.is_zipfile(root):
        raise DatasetLayoutError(f"{root}: expected a dataset folder or the .zip archive of one")
    with tempfile.TemporaryDirectory(prefix="nucleiseg-") as scratch:
        yield extract_safely(root, Path(scratch))


def _size(count: float) -> str:
    """``50.0 kB``, ``3.0 GB``: decimal units, as disks are sold and ``df -H`` prints."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} bytes" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _free_bytes(folder: Path) -> int:
    """Free space of the file system ``folder`` is (or will be) on."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_members(
    archive_path: Path,
    members: list[zipfile.ZipInfo],
    target: Path,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> int:
    """The bytes ``members`` unpack to, by their declared sizes, after refusing (one line, nothing written) a member
    that points outside ``target``, declares more than ``max_member_bytes`` or compresses like a zip bomb, and an
    archive larger than ``max_total_bytes`` or the free space of ``target``."""
    total = 0
    for member in members:
        if not (target / member.filename).resolve().is_relative_to(target):
            raise DatasetLayoutError(
                f"{archive_path}: archive member {member.filename!r} points outside the archive; refused"
            )
        if member.is_dir():
            continue
        if member.file_size > max_member_bytes:
            raise DatasetLayoutError(
                f"{archive_path}: member {member.filename!r} declares {_size(member.file_size)}, above the "
                f"{_size(max_member_bytes)} limit for one file of a dataset archive; refused, nothing extracted"
            )
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > RATIO_FLOOR_BYTES and ratio > MAX_RATIO:
            raise DatasetLayoutError(
                f"{archive_path}: member {member.filename!r} declares {_size(member.file_size)} compressed "
                f"{ratio:.0f}x (into {_size(member.compress_size)}), more than {MAX_RATIO}x: a zip bomb's ratio, not "
                "a dataset's; refused, nothing extracted"
            )
        total += member.file_size
    if total > max_total_bytes:
        raise DatasetLayoutError(
            f"{archive_path}: its members declare {_size(total)} in all, above the {_size(max_total_bytes)} limit "
            "for a dataset archive; refused, nothing extracted"
        )
    free = _free_bytes(target)
    if total > free:
        raise DatasetLayoutError(
            f"{archive_path}: unpacking needs {_size(total)} ({len(members)} members) but {target} has "
            f"{_size(free)} free; make room, or unpack it into a folder with room and point the dataset at that folder"
        )
    return total


def extract_safely(
    archive_path: Path,
    target: Path,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> Path:
    """Extract a zip into ``target`` after :func:`check_members` (zip-slip, sizes, zip bombs, free space), streaming
    each member in blocks under a temporary name; a damaged archive is named, and what this call had extracted is
    removed when it fails. Returns ``target``."""
    target = target.resolve()
    created: list[Path] = []
    with zipfile.ZipFile(archive_path) as archive:
        members = archive.infolist()
        check_members(archive_path, members, target, max_member_bytes, max_total_bytes)
        try:
            for member in members:
                destination = target / member.filename
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, atomic_stream(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, BLOCK)  # zipfile stops at the declared size and checks the CRC
                created.append(destination)
        except (zipfile.BadZipFile, EOFError, zlib.error) as error:
            _remove(created)
            raise DatasetLayoutError(f"{archive_path}: the archive is damaged ({error}); download it again") from None
        except OSError as error:
            _remove(created)
            raise DatasetLayoutError(
                f"{archive_path}: could not be unpacked into {target} ({error.strerror or error}); nothing kept"
            ) from None
        except BaseException:
            _remove(created)
            raise
    return target


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def find_layout_root(folder: Path, is_root: Callable[[Path], bool], max_depth: int = 3) -> Path | None:
    """Return ``folder`` or the shallowest sub-folder (breadth first, sorted) for which ``is_root`` holds."""
    level = [folder]
    for _ in range(max_depth + 1):
        for candidate in level:
            if is_root(candidate):
                return candidate
        level = sorted(p for parent in level for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    return None
