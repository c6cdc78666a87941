"""A typed model's nuclei in predict's outputs: each nucleus's class and its probability in the tables (``type``,
``type_probability``), the GeoJSON (QuPath classifications, coloured) and the overlay, and the counts per class of
an image, a slide, a region of interest and a cohort row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

TYPE_COLUMNS = ["type", "type_probability"]


def with_types(
    features: pd.DataFrame, classified: tuple[np.ndarray, np.ndarray] | None, names: list[str]
) -> pd.DataFrame:
    """``features`` (one row per nucleus, ``nucleus_id`` its label) with ``type`` (the class name) and
    ``type_probability`` (the share of its pixels that voted it) of a typed model; unchanged when untyped."""
    if classified is None:
        return features
    classes, shares = classified
    ids = features["nucleus_id"].to_numpy(dtype=np.int64)
    lookup = np.array(["", *names], dtype=object)
    features = features.copy()
    features["type"] = lookup[classes[ids]] if len(ids) else pd.Series(dtype=object)
    features["type_probability"] = shares[ids].astype(float) if len(ids) else pd.Series(dtype=float)
    return features


def class_counts(features: pd.DataFrame, names: list[str]) -> dict[str, int]:
    """Nuclei per class (every class named, 0 when none), from a table with a ``type`` column."""
    if "type" not in features:
        return {}
    found = features["type"].value_counts().to_dict()
    return {name: int(found.get(name, 0)) for name in names}


def class_densities(counts: Mapping[str, int], area_mm2: float | None) -> dict[str, Any]:
    """``{class: {"nuclei": n, "nuclei_per_mm2": n / area}}`` of one region or slide (None without an area)."""
    return {
        name: {"nuclei": int(n), "nuclei_per_mm2": n / area_mm2 if area_mm2 else None} for name, n in counts.items()
    }
