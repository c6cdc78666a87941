"""The typed datasets as ``data.sources`` entries (``conf/data/pannuke.yaml``, ``typed_folder.yaml``,
``synthetic_typed.yaml``): each key reads one dataset into :class:`~nucleiseg.data.source.SourceImage` records with
their nucleus classes, which :mod:`nucleiseg.data.prepare` prepares as it prepares the untyped ones (the classes of
each nucleus travel with it through resizing, tiling and Algorithm 1's flips and rotation).

A prepared dataset has one list of classes: every typed source in it must name the same classes, in the same order,
and typed and untyped sources are not mixed (a nucleus of unknown class would be taught as background of every
class).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.data.source import SourceImage
from nucleiseg.util.errors import ConfigError

TYPED_KEYS = ("pannuke", "consep", "lizard", "conic", "monusac", "typed_folder", "synthetic_typed")


def typed_sources(key: str, cfg: Mapping[str, Any], stack: ExitStack) -> dict[str, list[SourceImage]]:
    """``{dataset: [sources]}`` of the typed dataset ``data.sources.<key>``."""
    from nucleiseg.data.archive import dataset_folder

    if key == "synthetic_typed":
        return {"synthetic_typed": synthetic_typed_sources(cfg)}
    folder = stack.enter_context(dataset_folder(cfg["root"], key.replace("_", "-")))
    if key == "pannuke":
        from nucleiseg.data.typed.pannuke import find_pannuke

        return {"pannuke": find_pannuke(folder, cfg.get("folds"))}
    if key == "typed_folder":
        from nucleiseg.data.typed.folder import find_typed_folder

        return {"typed_folder": find_typed_folder(folder)}
    import importlib

    reader = getattr(importlib.import_module(f"nucleiseg.data.typed.{key}"), f"find_{key}")
    return {key: reader(folder)}


def synthetic_typed_sources(cfg: Mapping[str, Any]) -> list[SourceImage]:
    """Typed synthetic tiles (:func:`nucleiseg.data.synthetic.synthetic_typed_tile`): ``images_per_slide[i]``
    tiles for "slide" ``i + 1``, classes with distinct sizes, shapes and stains."""
    from nucleiseg.data.synthetic import TypedSyntheticSpec, synthetic_typed_tile

    spec = TypedSyntheticSpec(height=cfg["tile_size"], width=cfg["tile_size"], n_nuclei=cfg["n_nuclei"])
    classes = tuple(kind.name for kind in spec.classes)
    cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def tile(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if seed not in cache:
            cache[seed] = synthetic_typed_tile(spec, seed)
        return cache[seed]

    sources = []
    for slide, count in enumerate(cfg["images_per_slide"], start=1):
        for k in range(1, count + 1):
            seed = int(cfg["seed"]) * 1_000_003 + slide * 101 + k
            path = Path("synthetic_typed") / f"{slide:02d}_{k}"
            sources.append(
                SourceImage(
                    "synthetic_typed",
                    f"{slide:02d}_{k}",
                    f"synthetic_typed-p{slide:02d}",
                    path,
                    path,
                    lambda _p, s=seed: tile(s)[0],
                    lambda _p, _shape, s=seed: tile(s)[1],
                    classes=classes,
                    _load_typed=lambda _p, _shape, s=seed: tile(s)[1:],
                )
            )
    return sources


def dataset_classes(sources: Mapping[str, list[SourceImage]]) -> list[str]:
    """The class names every source shares (empty for untyped data); a mix of typed and untyped sources, or of
    class lists, is refused naming the datasets."""
    found = {name: {s.classes if s.typed else () for s in group} for name, group in sources.items() if group}
    lists = {tuple(classes) for group in found.values() for classes in group}
    if len(lists) > 1:
        described = "; ".join(f"{name}: {sorted(map(list, group))}" for name, group in found.items())
        raise ConfigError(
            f"data.sources: the datasets name different nucleus classes ({described}); expected one list of classes "
            "for a prepared dataset (typed and untyped data are not mixed)"
        )
    return list(next(iter(lists), ()))
