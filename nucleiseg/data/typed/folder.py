"""The typed training folder (dataset ``typed-folder``): what ``nucleiseg data from-qupath`` and ``nucleiseg data
synthetic --typed`` write, read back like any dataset.

  DIR/images/NAME.png        uint8 RGB
  DIR/instances/NAME.tif     int32 instance labels (0 background)
  DIR/types/NAME.tif         int32 class index of each pixel's nucleus (k: classes[k - 1]; 0 background or unknown)
  DIR/classes.json           {"classes": [...], "microns_per_pixel": float or null, "source": "qupath" | "synthetic",
                              "colours": {class: [r, g, b]}, "patients": {NAME: patient} (optional)}
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.data.image_io import read_rgb
from nucleiseg.data.source import SourceImage, check_types
from nucleiseg.util.errors import ConfigError, DatasetLayoutError, ImageReadError

CLASSES_FILE = "classes.json"
FOLDERS = ("images", "instances", "types")
EXPECTED_LAYOUT = """expected a typed folder (nucleiseg data from-qupath / synthetic --typed):
  DIR/images/NAME.png, DIR/instances/NAME.tif (int32), DIR/types/NAME.tif (int32), DIR/classes.json"""


def read_classes_file(root: Path) -> dict[str, Any]:
    """``classes.json`` of a typed folder, checked: a list of distinct class names, a pixel size or null."""
    path = root / CLASSES_FILE
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetLayoutError(f"{path}: not found; {EXPECTED_LAYOUT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetLayoutError(f'{path}: not JSON ({error}); expected {{"classes": [...], ...}}') from None
    classes = content.get("classes") if isinstance(content, dict) else None
    if (
        not isinstance(classes, list)
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise DatasetLayoutError(f'{path}: "classes" is {classes!r}; expected a list of distinct class names')
    mpp = content.get("microns_per_pixel")
    if mpp is not None and (not isinstance(mpp, int | float) or mpp <= 0):
        raise DatasetLayoutError(f"{path}: microns_per_pixel {mpp!r}; expected a positive number or null")
    return content


def read_label_tiff(path: Path) -> np.ndarray:
    """An ``int32 HxW`` label image as written here (zlib TIFF); any other dtype or shape is refused."""
    import tifffile

    try:
        array = tifffile.imread(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (tifffile.TiffFileError, ValueError, OSError) as error:
        raise ImageReadError(f"{path}: cannot read the TIFF ({str(error)[:120]}); expected int32 labels") from None
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise ImageReadError(f"{path}: {array.dtype} array of shape {array.shape}; expected int32 HxW labels")
    return array.astype(np.int32)


def _load_typed(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return read_label_tiff(path), read_label_tiff(path.parent.parent / "types" / path.name)


def _load_instances(path: Path, shape: tuple[int, int]) -> np.ndarray:
    return read_label_tiff(path)


def find_typed_folder(root: str | Path) -> list[SourceImage]:
    """The images of the typed folder ``root``, each with its instance and class TIFFs (dataset ``typed-folder``);
    ``patient`` from ``classes.json``'s ``patients`` where given, else the image's own name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: typed folder not found; {EXPECTED_LAYOUT}")
    missing = [name for name in FOLDERS if not (root / name).is_dir()]
    if missing:
        raise DatasetLayoutError(f"{root}: no {', '.join(missing)} folder; {EXPECTED_LAYOUT}")
    content = read_classes_file(root)
    patients = content.get("patients") or {}
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() == ".png")
    if not images:
        raise DatasetLayoutError(f"{root / 'images'}: no .png image; {EXPECTED_LAYOUT}")
    sources = []
    for image in images:
        for folder in FOLDERS[1:]:
            if not (root / folder / f"{image.stem}.tif").is_file():
                raise DatasetLayoutError(f"{image}: no {folder}/{image.stem}.tif; {EXPECTED_LAYOUT}")
        sources.append(
            SourceImage(
                "typed-folder",
                image.stem,
                str(patients.get(image.stem, image.stem)),
                image,
                root / "instances" / f"{image.stem}.tif",
                read_rgb,
                _load_instances,
                content.get("microns_per_pixel"),
                tuple(content["classes"]),
                _load_typed,
                {"source": str(content.get("source", ""))},
            )
        )
    return sources


def refuse_existing(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty ``out`` unless ``overwrite`` (checked before any work is done)."""
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not empty: choose another --to or add --overwrite")


def write_typed_folder(
    out: str | Path,
    samples: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    classes: tuple[str, ...],
    microns_per_pixel: float | None,
    source: str,
    colours: Mapping[str, list[int]] | None = None,
    patients: Mapping[str, str] | None = None,
    extra_files: Callable[[], Mapping[str, bytes]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``samples`` (``(name, image uint8 HxWx3, instances int HxW, types int HxW)``) as the typed folder
    ``out``. It is built beside ``out`` under a temporary name and renamed into place only when complete, so an
    interrupted run leaves no half folder; an existing ``out`` is replaced only with ``overwrite``. ``extra_files``
    gives more files (``{name: bytes}``: a report of the samples) once every sample is written."""
    from nucleiseg.util.writing import png_bytes, tiff_bytes, write_bytes_atomic, write_json_atomic

    out = Path(out)
    refuse_existing(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    try:
        for name, image, instances, types in samples:
            check_types(instances, types, len(classes), name)
            write_bytes_atomic(scratch / "images" / f"{name}.png", png_bytes(image))
            write_bytes_atomic(scratch / "instances" / f"{name}.tif", tiff_bytes(instances.astype(np.int32)))
            write_bytes_atomic(scratch / "types" / f"{name}.tif", tiff_bytes(types.astype(np.int32)))
        for name, data in (extra_files() if extra_files else {}).items():
            write_bytes_atomic(scratch / name, data)
        record = {"classes": list(classes), "microns_per_pixel": microns_per_pixel, "source": source}
        record["colours"] = {k: list(v) for k, v in (colours or {}).items()}
        if patients:
            record["patients"] = dict(patients)
        write_json_atomic(scratch / CLASSES_FILE, record)
        _install(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _install(scratch: Path, out: Path) -> None:
    """Rename the finished ``scratch`` to ``out``; a replaced ``out`` is set aside first, removed after."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(scratch, out)
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    os.replace(out, old)
    os.replace(scratch, out)
    shutil.rmtree(old) if old.is_dir() else old.unlink()
