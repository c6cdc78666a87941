"""Open a dataset given as a folder or as the zip archive the user downloaded."""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nucleiseg.util.errors import DatasetLayoutError


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


def extract_safely(archive_path: Path, target: Path) -> Path:
    """Extract a zip into ``target`` after checking that no member points outside it (zip-slip: ``../`` or
    absolute names); a damaged archive is named. Returns ``target``."""
    target = target.resolve()
    with zipfile.ZipFile(archive_path) as archive:
        for member in archive.infolist():
            if not (target / member.filename).resolve().is_relative_to(target):
                raise DatasetLayoutError(
                    f"{archive_path}: archive member {member.filename!r} points outside the archive; refused"
                )
        try:
            archive.extractall(target)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise DatasetLayoutError(f"{archive_path}: the archive is damaged ({error}); download it again") from None
    return target


def find_layout_root(folder: Path, is_root: Callable[[Path], bool], max_depth: int = 3) -> Path | None:
    """Return ``folder`` or the shallowest sub-folder (breadth first, sorted) for which ``is_root`` holds."""
    level = [folder]
    for _ in range(max_depth + 1):
        for candidate in level:
            if is_root(candidate):
                return candidate
        level = sorted(p for parent in level for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    return None
