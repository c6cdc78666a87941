"""What class each nucleus is, from a typed model's per-pixel class probabilities: the majority of its pixels, as
HoVer-Net assigns types (``models/hovernet/post_proc.py``, ``process``): each pixel votes for its most probable
class; the nucleus takes the class with the most votes, and when that is background (0) and another class has
votes, the most voted other class; its ``type_probability`` is that class's share of the nucleus's pixels.

Our own code: HoVer-Net's loop over nuclei is one ``np.bincount`` over (nucleus, class) pairs here; the rule is
theirs, tested against a transcription of their loop.
"""

from __future__ import annotations

import numpy as np


def nucleus_classes(labels: np.ndarray, class_probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``int HxW`` nuclei 1..n and ``float (K+1)xHxW`` class probabilities (0: background) -> ``(classes int32
    (n+1,), probabilities float32 (n+1,))``, indexed by nucleus label (entry 0 unused): each nucleus's class
    1..K (0 only for a nucleus every pixel of which says background) and the share of its pixels that voted it."""
    labels = np.asarray(labels)
    count = int(labels.max(initial=0))
    classes = np.zeros(count + 1, np.int32)
    shares = np.zeros(count + 1, np.float32)
    if not count:
        return classes, shares
    n_classes = class_probabilities.shape[0]
    votes = np.argmax(class_probabilities, axis=0)
    inside = labels > 0
    table = np.bincount(
        labels[inside].astype(np.int64) * n_classes + votes[inside], minlength=(count + 1) * n_classes
    ).reshape(count + 1, n_classes)
    areas = table.sum(axis=1)
    best = np.argmax(table, axis=1)
    others = table.copy()
    others[:, 0] = 0
    # background won, another class has votes: the most voted other class (HoVer-Net's "2nd most dominant")
    fallback = (best == 0) & (others.max(axis=1) > 0)
    best = np.where(fallback, np.argmax(others, axis=1), best)
    classes[:] = best
    shares[:] = table[np.arange(count + 1), best] / (areas + 1.0e-6)
    classes[0], shares[0] = 0, 0.0
    return classes, shares


def class_map(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``int32 HxW``: each nucleus's pixels painted with its class (0 outside nuclei)."""
    return np.where(labels > 0, np.asarray(classes)[labels], 0).astype(np.int32)
