"""Summaries of a raw dataset: counts, sizes and nuclei per image (``nucleiseg data inspect``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.data.archive import dataset_folder
from nucleiseg.data.monuseg import find_monuseg
from nucleiseg.data.tnbc import find_tnbc
from nucleiseg.util.errors import ConfigError

READERS = {"tnbc": find_tnbc, "monuseg": find_monuseg}


def inspect_dataset(dataset: str, root: str | Path, mask_dir: str | Path | None = None) -> dict[str, Any]:
    """Read every image and mask of ``dataset`` under ``root`` and summarise them (raises on any problem)."""
    if dataset not in READERS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {sorted(READERS)}")
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
