"""What the typed readers share: reading MATLAB label files, per-nucleus classes, sequential relabelling."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
from skimage.segmentation import relabel_sequential

from nucleiseg.util.errors import DatasetLayoutError, ImageReadError


def load_mat(path: Path, keys: tuple[str, ...], layout: str, optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (and those of ``optional`` the file has) of the MATLAB file ``path`` (scipy.io.loadmat,
    v5 .mat as the Warwick datasets ship); a missing file, an unreadable one or a missing key is named in one line
    with the expected ``layout``."""
    from scipy.io import loadmat

    if not path.is_file():
        raise DatasetLayoutError(f"{path}: label file not found; {layout}")
    try:
        content = loadmat(path)
    except (ValueError, OSError, TypeError, NotImplementedError) as error:
        raise ImageReadError(f"{path}: cannot read the .mat file ({str(error)[:120]}); expected a .mat") from None
    missing = [key for key in keys if key not in content]
    if missing:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DatasetLayoutError(f"{path}: no {', '.join(missing)} in the .mat file (found {found}); {layout}")
    return {key: np.asarray(content[key]) for key in (*keys, *optional) if key in content}


def integer_labels(array: np.ndarray, path: Path | str, what: str) -> np.ndarray:
    """``array`` (any numeric dtype: MATLAB and NumPy releases store labels as float64 too) as ``int64``, refusing
    negative, non-finite or fractional values."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ImageReadError(f"{path}: {what} holds non-integer values; expected integer labels")
    elif array.dtype.kind not in "iub":
        raise ImageReadError(f"{path}: {what} has dtype {array.dtype}; expected integer labels")
    labels = array.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ImageReadError(f"{path}: {what} has negative values; expected 0 for background and positive labels")
    return labels


def majority_class(instances: np.ndarray, class_map: np.ndarray) -> dict[int, int]:
    """``{label: class}``: the most frequent value of ``class_map`` over each instance of ``instances`` (both
    int HxW), for labels whose pixel classes disagree here and there (ties: the smaller class)."""
    inside = instances > 0
    pairs, counts = np.unique(
        np.stack([instances[inside], class_map[inside]]).astype(np.int64), axis=1, return_counts=True
    )
    best: dict[int, tuple[int, int]] = {}
    for (label, klass), count in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        if label not in best or count > best[label][1]:
            best[label] = (klass, count)
    return {label: klass for label, (klass, _) in best.items()}


def relabel_with_classes(instances: np.ndarray, class_of: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(instances int32 HxW labelled 1..N in order of the original labels, types int32 HxW)`` from any positive
    labels and ``class_of`` (original label -> class index; a label it lacks gets class 0, unknown)."""
    relabelled, _, _ = relabel_sequential(instances.astype(np.int64))
    present = np.unique(instances[instances > 0])  # relabel_sequential numbers them in this (sorted) order
    classes = np.array([0, *(class_of.get(int(label), 0) for label in present)], dtype=np.int32)
    return relabelled.astype(np.int32), classes[relabelled]


def class_counts(instances: np.ndarray, types: np.ndarray, n_classes: int) -> list[int]:
    """Nuclei per class index ``0..n_classes`` (index 0: nuclei of unknown class) of one labelled image."""
    labels, first = np.unique(instances.ravel(), return_index=True)
    per_label = types.ravel()[first[labels > 0]]
    return np.bincount(per_label, minlength=n_classes + 1)[: n_classes + 1].tolist()


def find_folders(root: Path, accept: Callable[[Path], bool], depth: int = 3) -> list[Path]:
    """Folders under ``root`` (itself included, ``depth`` levels down, hidden ones skipped) for which ``accept``
    holds, sorted; a release unpacked by hand or from a mirror has an extra level or two."""
    found, level = [], [root]
    for _ in range(depth + 1):
        found.extend(folder for folder in level if accept(folder))
        level = sorted(p for parent in level for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(found)


@lru_cache(maxsize=16)
def memory_mapped(path: str) -> np.ndarray:
    """The ``.npy`` at ``path`` memory-mapped read-only (PanNuke's and CoNIC's arrays are GBs: only the patches used
    are read from disk); kept open for the next patch."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ImageReadError(f"{path}: cannot read the array ({str(error)[:120]}); expected a NumPy .npy") from None
