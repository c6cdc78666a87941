"""The report's figures: loss curves (paper Figures 7 and 8) and predictions on one test image (Figure 9, with
the predicted nuclei of each configuration, so heads can be compared on the same image). PNG and SVG."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nucleiseg.tracking.study import table_one_order
from nucleiseg.util.errors import NucleisegError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from nucleiseg.inference.settings import InferenceSettings


def _pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure: Figure, stem: Path, dpi: int) -> list[Path]:
    """Save ``figure`` as ``stem.png`` and ``stem.svg``, then free it."""
    plt = _pyplot()
    figure.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return paths


def draw_curves(axis: Axes, curves: pd.DataFrame, title: str, ylabel: str) -> None:
    """One line per configuration over epochs on ``axis``, in Table I's order (whole-number ticks: epochs are
    counts). The report's figures and the loss-curve notebook both draw with it."""
    from matplotlib.ticker import MaxNLocator

    order = [c for c in table_one_order() if c in set(curves.configuration)]
    order += sorted(set(curves.configuration) - set(order))
    for configuration in order:
        line = curves[curves.configuration == configuration].sort_values("epoch")
        axis.plot(line.epoch + 1, line.value, marker=".", label=configuration)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)


def plot_curves(curves: pd.DataFrame, title: str, ylabel: str, stem: Path) -> list[Path]:
    """:func:`draw_curves` as ``stem.png`` and ``stem.svg``."""
    figure, axis = _pyplot().subplots(figsize=(7, 4.5))
    draw_curves(axis, curves, title, ylabel)
    return save(figure, stem, dpi=150)


def _chosen_runs(runs: pd.DataFrame, configurations: list[str]) -> list:
    chosen = []
    for configuration in configurations:
        candidates = runs[(runs.configuration == configuration) & runs.finished].dropna(
            subset=["checkpoint", "data_folder"]
        )
        candidates = candidates[candidates.checkpoint.map(lambda p: Path(p).is_file())]
        if candidates.empty:
            raise NucleisegError(f"no finished run of {configuration!r} with its checkpoint on this machine")
        chosen.append(candidates.sort_values("seed").iloc[0])
    return chosen


def prediction_figure(
    runs: pd.DataFrame,
    configurations: list[str],
    image_index: int,
    stem: Path,
    settings: InferenceSettings | None = None,
) -> list[Path]:
    """For each configuration, one test image: the image, the truth, the mask predicted, its errors (false
    positives red, false negatives blue) and the nuclei found (outlined, counted against the truth)."""
    plt = _pyplot()
    from skimage.segmentation import find_boundaries

    from nucleiseg.data.datamodule import load_split
    from nucleiseg.inference.overlays import error_overlay
    from nucleiseg.inference.prepared import split_source
    from nucleiseg.inference.session import InferenceSession

    chosen = _chosen_runs(runs, configurations)
    figure, axes = plt.subplots(len(chosen), 5, figsize=(15, 3.1 * len(chosen)), squeeze=False)
    for row, run in zip(axes, chosen, strict=True):
        test = load_split(run.data_folder, "test")
        if not 0 <= image_index < len(test):
            raise NucleisegError(f"--figure-image {image_index}: the test split has {len(test)} images")
        item = test[image_index]
        image, truth = item["image"].permute(1, 2, 0).numpy(), item["mask"].numpy()
        session = InferenceSession.from_checkpoint(run.checkpoint, settings)
        _, normalise = split_source(session, run.data_folder)
        prediction = session.predict(image, 1.0, normalise)
        mask = session.binarise(prediction.probability)
        nuclei = session.instances(prediction)
        outlined = image.copy()
        outlined[find_boundaries(truth, mode="inner")] = (0, 90, 255)
        outlined[find_boundaries(nuclei, mode="inner")] = (255, 230, 0)
        panels = [
            (image, "image"),
            (truth > 0, "ground truth"),
            (mask, run.configuration),
            (error_overlay(image, truth > 0, mask), "errors: FP red, FN blue"),
            (outlined, f"{int(nuclei.max())} nuclei found (yellow), {int(np.unique(truth[truth > 0]).size)} true"),
        ]
        for axis, (picture, title) in zip(row, panels, strict=True):
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    return save(figure, stem, dpi=120)
