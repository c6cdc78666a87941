"""Summaries of a raw dataset: counts, sizes and nuclei per image (``nucleiseg data inspect``); for the typed datasets
also nuclei per class, the pixel size, the licence and the tissue."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.data.archive import dataset_folder
from nucleiseg.data.monuseg import find_monuseg
from nucleiseg.data.source import SourceImage
from nucleiseg.data.tnbc import find_tnbc
from nucleiseg.util.errors import ConfigError

READERS = {"tnbc": find_tnbc, "monuseg": find_monuseg}
TISSUE = {"lizard": "colon", "conic": "colon", "consep": "colon (colorectal adenocarcinoma)"}


def _typed_readers() -> dict[str, Callable[[Path], list[SourceImage]]]:
    from nucleiseg.data.typed.conic import find_conic
    from nucleiseg.data.typed.consep import find_consep
    from nucleiseg.data.typed.folder import find_typed_folder
    from nucleiseg.data.typed.lizard import find_lizard
    from nucleiseg.data.typed.monusac import find_monusac
    from nucleiseg.data.typed.pannuke import find_pannuke

    return {
        "pannuke": find_pannuke,
        "consep": find_consep,
        "lizard": find_lizard,
        "conic": find_conic,
        "monusac": find_monusac,
        "typed-folder": find_typed_folder,
    }


def inspect_dataset(dataset: str, root: str | Path, mask_dir: str | Path | None = None) -> dict[str, Any]:
    """Read every image and mask of ``dataset`` under ``root`` and summarise them (raises on any problem)."""
    from nucleiseg.data.typed import TYPED_DATASETS

    if dataset in TYPED_DATASETS:
        return inspect_typed(dataset, root)
    if dataset not in READERS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {sorted([*READERS, *TYPED_DATASETS])}")
    with dataset_folder(root) as folder:
        sources = find_tnbc(folder) if dataset == "tnbc" else find_monuseg(folder, mask_dir)
        entries, sizes = [], Counter()
        for source in sources:
            image, mask = source.load()
            size = f"{image.shape[1]}x{image.shape[0]}"
            sizes[size] += 1
            entries.append(
                {
                    "name": source.name,
                    "patient": source.patient,
                    "size": size,
                    "n_nuclei": int(np.unique(mask[mask > 0]).size),
                    "annotation": Path(source.annotation_path).name,
                }
            )
    return {
        "dataset": dataset,
        "root": str(root),
        "n_images": len(entries),
        "n_masks": len(entries),
        "n_patients": len({e["patient"] for e in entries}),
        "sizes": dict(sizes),
        "n_nuclei": sum(e["n_nuclei"] for e in entries),
        "images": entries,
    }


def _licence(dataset: str) -> str:
    from nucleiseg.data.download import ARCHIVES, archives_of

    if dataset not in ARCHIVES:
        return "that of the images and annotations it was made from (not recorded in the folder)"
    return archives_of(dataset)[0].licence


def _typed_entry(source: SourceImage) -> dict[str, Any]:
    from nucleiseg.data.typed.common import class_counts

    image, instances, types = source.load_typed()
    counts = class_counts(instances, types, len(source.classes))
    entry = {
        "name": source.name,
        "patient": source.patient,
        "size": f"{image.shape[1]}x{image.shape[0]}",
        "n_nuclei": int(sum(counts)),
        "per_class": dict(zip(source.classes, counts[1:], strict=True)),
        "unknown_class": counts[0],
        **source.metadata,
    }
    if source.dataset == "monusac":
        from nucleiseg.data.typed.monusac import ambiguous_count

        entry["ambiguous_regions"] = ambiguous_count(source)
    return entry


def _totals(entries: list[dict[str, Any]], classes: tuple[str, ...]) -> dict[str, Any]:
    return {
        "n_images": len(entries),
        "n_nuclei": sum(e["n_nuclei"] for e in entries),
        "per_class": {name: sum(e["per_class"][name] for e in entries) for name in classes},
    }


def inspect_typed(dataset: str, root: str | Path) -> dict[str, Any]:
    """Summary of a typed dataset: images, patients, sizes, nuclei in all and per class (nuclei of unknown class
    apart), the classes, the pixel size, the licence, the tissue where the dataset has one; per fold (PanNuke) or
    per release split (CoNSeP, Lizard, MoNuSAC); MoNuSAC's ambiguous regions."""
    if not Path(root).expanduser().exists():
        hint = "" if dataset == "typed-folder" else f"; download it with `nucleiseg data download {dataset} --to DIR`"
        raise FileNotFoundError(f"{root}: dataset root not found{hint}")
    with dataset_folder(root) as folder:
        sources = _typed_readers()[dataset](folder)
        entries = [_typed_entry(source) for source in sources]
    classes = sources[0].classes
    summary = {
        "dataset": dataset,
        "root": str(root),
        **_totals(entries, classes),
        "n_patients": len({e["patient"] for e in entries}),
        "sizes": dict(Counter(e["size"] for e in entries)),
        "classes": list(classes),
        "unknown_class": sum(e["unknown_class"] for e in entries),
        "microns_per_pixel": sources[0].microns_per_pixel,
        "licence": _licence(dataset),
        "tissue": TISSUE.get(dataset),
    }
    group = "fold" if dataset == "pannuke" else "split"
    if any(group in e for e in entries):
        names = sorted({e.get(group, "") for e in entries})
        summary[f"per_{group}"] = {
            name: _totals([e for e in entries if e.get(group, "") == name], classes) for name in names
        }
    if dataset == "pannuke":
        summary["tissues"] = dict(Counter(e["tissue"] for e in entries))
    if dataset == "monusac":
        summary["ambiguous_regions"] = sum(e["ambiguous_regions"] for e in entries)
    summary["images"] = entries
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary in a few lines for the terminal (``--json`` prints it all)."""
    lines = [
        f"{summary['dataset']} at {summary['root']}: {summary['n_images']} images, {summary['n_patients']} patients, "
        f"sizes {summary['sizes']}, {summary['n_nuclei']} nuclei"
    ]
    if "classes" not in summary:
        return lines
    per_class = ", ".join(f"{name} {n}" for name, n in summary["per_class"].items())
    lines.append(
        f"classes: {per_class}" + (f"; unknown class {summary['unknown_class']}" if summary["unknown_class"] else "")
    )
    mpp = summary["microns_per_pixel"]
    lines.append(f"pixel size {mpp} um/px" if mpp else "pixel size unknown")
    lines.append(f"licence: {summary['licence']}")
    if summary.get("tissue"):
        lines.append(f"tissue: {summary['tissue']}")
    for key in ("per_fold", "per_split"):
        for name, totals in summary.get(key, {}).items():
            counts = ", ".join(f"{c} {n}" for c, n in totals["per_class"].items())
            lines.append(f"{key[4:]} {name}: {totals['n_images']} images, {totals['n_nuclei']} nuclei ({counts})")
    if summary.get("ambiguous_regions"):
        lines.append(f"ambiguous regions: {summary['ambiguous_regions']} (not nuclei; left out of training)")
    return lines
