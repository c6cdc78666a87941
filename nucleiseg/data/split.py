"""The paper's splits: which source images train, validate and test.

All splitting happens on source images, before any augmentation, so no augmented copy of one image can
land in two splits.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

import numpy as np

from nucleiseg.data.source import SourceImage
from nucleiseg.util.errors import ConfigError

# none: no test hold-out (a release model trained on everything); folds: a dataset's own folds (PanNuke's protocol)
SPLIT_MODES = ("paper", "by_patient", "none", "folds")


def _by_patient(sources: list[SourceImage]) -> dict[str, list[SourceImage]]:
    groups: dict[str, list[SourceImage]] = defaultdict(list)
    for source in sources:
        groups[source.patient].append(source)
    return dict(sorted(groups.items()))


def split_paper(sources: list[SourceImage], n_test: int, seed: int) -> tuple[list[SourceImage], list[SourceImage]]:
    """Image-level split stratified over patients (slides): each slide gives about half its images to test.

    Each slide contributes ``floor(n * n_test / N)`` images; the remaining test places go to a seeded random
    choice of slides with the largest remainders, so the test set always has exactly ``n_test`` images.
    """
    if not 0 < n_test < len(sources):
        raise ConfigError(f"data.protocol.n_test={n_test}: expected between 1 and {len(sources) - 1}")
    rng = np.random.default_rng(seed)
    groups = _by_patient(sources)
    share = {p: len(g) * n_test / len(sources) for p, g in groups.items()}
    quota = {p: int(np.floor(s)) for p, s in share.items()}
    leftover = n_test - sum(quota.values())
    # ties between equal remainders are broken by the seeded shuffle, not by slide order
    order = list(groups)
    rng.shuffle(order)
    for patient in sorted(order, key=lambda p: -(share[p] - quota[p]))[:leftover]:
        quota[patient] += 1
    test_ids = set()
    for patient, group in groups.items():
        picked = rng.choice(len(group), size=quota[patient], replace=False)
        test_ids.update(group[i].source_id for i in picked)
    return [s for s in sources if s.source_id not in test_ids], [s for s in sources if s.source_id in test_ids]


def split_by_patient(sources: list[SourceImage], n_test: int, seed: int) -> tuple[list[SourceImage], list[SourceImage]]:
    """Whole patients go to test: the seeded subset of patients whose image count is closest to ``n_test``."""
    groups = _by_patient(sources)
    if len(groups) < 2:
        raise ConfigError("data.protocol.split=by_patient needs images from at least two patients/slides")
    patients = list(groups)
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    best: tuple[int, tuple[str, ...]] | None = None
    # exhaustive over subsets is fine: TNBC has 11 slides (2,047 subsets); cap the size for larger sets
    for size in range(1, min(len(patients), 16)):
        for subset in combinations(patients, size):
            gap = abs(sum(len(groups[p]) for p in subset) - n_test)
            if best is None or gap < best[0]:
                best = (gap, subset)
    test_patients = set(best[1])
    return ([s for s in sources if s.patient not in test_patients], [s for s in sources if s.patient in test_patients])


def carve_validation(
    pool: list[SourceImage], fraction: float, seed: int, by_patient: bool
) -> tuple[list[SourceImage], list[SourceImage]]:
    """Hold out ``fraction`` of the training pool for validation, stratified over datasets.

    Groups are source images (or whole patients when ``by_patient``), so no group is in both parts.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.protocol.val_fraction={fraction}: expected 0 <= fraction < 1")
    if fraction == 0.0:
        return list(pool), []
    rng = np.random.default_rng(seed + 1)
    val_ids: set[str] = set()
    for dataset in sorted({s.dataset for s in pool}):
        members = [s for s in pool if s.dataset == dataset]
        groups = _by_patient(members) if by_patient else {s.source_id: [s] for s in members}
        keys = list(groups)
        rng.shuffle(keys)
        target = max(1, round(fraction * len(members)))
        taken = 0
        for index, key in enumerate(keys):
            if taken >= target or index == len(keys) - 1:  # the last group always stays in training
                break
            val_ids.update(s.source_id for s in groups[key])
            taken += len(groups[key])
    return [s for s in pool if s.source_id not in val_ids], [s for s in pool if s.source_id in val_ids]


def split_folds(sources: list[SourceImage], folds: dict[str, Any]) -> dict[str, list[SourceImage]]:
    """A dataset's own folds as the splits (PanNuke: train on one fold, select on another, test on the third):
    ``folds`` maps train/val/test to a fold (or a list of folds) as the dataset names them (``metadata["fold"]``),
    or is written ``"T/V/S"`` (train, validation and test fold: ``1/2/3``, what a sweep over rotations names)."""
    if isinstance(folds, str) and folds.count("/") == 2:
        folds = dict(zip(("train", "val", "test"), folds.split("/"), strict=True))
    if not isinstance(folds, dict) or set(folds) != {"train", "val", "test"}:
        raise ConfigError(
            f"data.protocol.folds={folds!r}: expected train/val/test folds as T/V/S (1/2/3) or {{train: F, val: F, "
            "test: F}}"
        )
    chosen = {
        split: {str(f) for f in (fold if isinstance(fold, list | tuple) else [fold])} for split, fold in folds.items()
    }
    known = {str(s.metadata.get("fold")) for s in sources}
    missing = sorted(set().union(*chosen.values()) - known)
    if missing:
        raise ConfigError(f"data.protocol.folds: fold(s) {missing} not in the data; its folds: {sorted(known)}")
    return {split: [s for s in sources if str(s.metadata.get("fold")) in names] for split, names in chosen.items()}


def split_none(sources: list[SourceImage], n_test: int, seed: int) -> tuple[list[SourceImage], list[SourceImage]]:
    """No test hold-out: every image trains (or validates). For a model released for use, not for comparison."""
    return list(sources), []
