"""Post-processing tuned on the validation split, never on test.

The model predicts every validation image once; the search then re-runs only the separation (NumPy, CPU) for each
combination of the grid and keeps the one with the best mean AJI, AJI+ or PQ. The untuned values are scored too,
so the result says how much tuning gained, and they are kept when no combination beats them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nucleiseg.metrics.instance import InstanceMetrics
from nucleiseg.postprocess.instances import METHODS, Postprocess, separate_instances
from nucleiseg.util.errors import ConfigError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from nucleiseg.inference.session import InferenceSession

log = logging.getLogger(__name__)

OBJECTIVES = ("aji", "aji_plus", "pq")
BALANCES = ("dataset", "image")


def dataset_of(name: str) -> str:
    """``tnbc/01_1:hflip`` -> ``tnbc`` (items of a prepared split); other names form one group."""
    return name.split("/", 1)[0] if "/" in name else ""


TUNABLE = tuple(name for name in Postprocess.__dataclass_fields__ if name != "method") + ("threshold",)


@dataclass
class TuningResult:
    postprocess: Postprocess
    threshold: float
    objective: str
    score: float  # of the chosen values, on the tuning split
    untuned_score: float
    n_images: int
    trials: list[dict[str, Any]] = field(default_factory=list)

    def hparams(self, split: str) -> dict[str, Any]:
        """What goes into the checkpoint's hyper-parameters."""
        return {
            "postprocess": self.postprocess.as_dict(),
            "threshold": self.threshold,
            "postprocess_tuned_on": split,
            "postprocess_objective": self.objective,
            "postprocess_score": self.score,
            "postprocess_untuned_score": self.untuned_score,
        }


def check_grid(grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """A grid ``{parameter: [values]}``; unknown parameters and empty lists are refused with the valid names."""
    checked = {}
    for name, values in grid.items():
        if name not in TUNABLE:
            raise ConfigError(f"tune.grid: {name!r} cannot be tuned; expected some of {list(TUNABLE)}")
        values = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else [values]
        if not values:
            raise ConfigError(f"tune.grid.{name}: expected at least one value")
        checked[name] = values
    return checked


@dataclass(frozen=True)
class TuneSettings:
    """The ``tune`` config group (``conf/tune/default.yaml`` holds the defaults). ``balance``: ``dataset`` scores
    the mean over datasets of each dataset's mean (a dataset cut into many tiles does not outvote the other),
    ``image`` the mean over all images. ``grid``: per separation method, the values tried."""

    enabled: bool
    objective: str  # aji | aji_plus | pq
    balance: str  # dataset | image
    grid: Mapping[str, Mapping[str, Sequence[Any]]]

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"tune.objective={self.objective!r}: expected one of {OBJECTIVES}")
        if self.balance not in BALANCES:
            raise ConfigError(f"tune.balance={self.balance!r}: expected one of {BALANCES}")
        for method, grid in self.grid.items():
            if method not in METHODS:
                raise ConfigError(f"tune.grid.{method}: not a separation method; expected some of {list(METHODS)}")
            check_grid(grid or {})

    def grid_for(self, method: str) -> dict[str, list[Any]]:
        """The checked grid of one separation method (empty: only the untuned values are scored)."""
        return check_grid(self.grid.get(method) or {})


def tune(
    session: InferenceSession,
    items: Iterable[tuple[str, Any, Any]],
    settings: TuneSettings,
    iou_threshold: float,
    normalise: bool,
) -> TuningResult:
    """Search the grid of ``settings`` for the session's separation method on ``items`` with ``session``'s model,
    scored by ``settings.objective`` balanced per ``settings.balance``."""
    objective, balance, grid = settings.objective, settings.balance, settings.grid_for(session.postprocess.method)
    predictions = [
        (dataset_of(name) if balance == "dataset" else "", mask, session.predict(image, normalise=normalise))
        for name, image, mask, *_ in items
    ]
    if not predictions:
        raise ConfigError("tuning needs a validation split with images (data.protocol.val_fraction > 0)")

    def score(settings: Postprocess, threshold: float) -> float:
        metrics: dict[str, InstanceMetrics] = {}
        for group, mask, prediction in predictions:
            labels = separate_instances(prediction.probability, threshold, settings, prediction.head_maps())
            metrics.setdefault(group, InstanceMetrics(iou_threshold)).update(mask, labels)
        return float(sum(m.compute()[objective] for m in metrics.values()) / len(metrics))

    base, base_threshold = session.postprocess, session.threshold
    untuned = score(base, base_threshold)
    best = (untuned, base, base_threshold)
    trials = [{**base.as_dict(), "threshold": base_threshold, objective: untuned, "untuned": True}]
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        chosen = dict(zip(names, values, strict=True))
        threshold = float(chosen.pop("threshold", base_threshold))
        settings = replace(base, **chosen)
        value = score(settings, threshold)
        trials.append({**settings.as_dict(), "threshold": threshold, objective: value, "untuned": False})
        if value > best[0]:
            best = (value, settings, threshold)
    log.info(
        "post-processing tuned on %d images: %s %.4f (untuned %.4f) with %s, threshold %s",
        len(predictions),
        objective,
        best[0],
        untuned,
        best[1].own(),
        best[2],
    )
    return TuningResult(best[1], best[2], objective, best[0], untuned, len(predictions), trials)


def tuning_tags(result: TuningResult, split: str = "val") -> dict[str, str]:
    """The chosen values as MLflow tags ``tuned.*`` (tags, not params: tuning again on demand replaces them)."""
    tags = {f"tuned.{k}": str(v) for k, v in result.postprocess.as_dict().items()}
    tags.update({"tuned.threshold": str(result.threshold), "tuned.on": split, "tuned.objective": result.objective})
    return tags


def tuning_metrics(result: TuningResult, split: str = "val") -> dict[str, float]:
    """The objective before and after tuning: ``SPLIT/OBJECTIVE_tuned`` and ``SPLIT/OBJECTIVE_untuned``."""
    return {
        f"{split}/{result.objective}_tuned": result.score,
        f"{split}/{result.objective}_untuned": result.untuned_score,
    }


def record_tuning(client: MlflowClient, run_id: str, result: TuningResult, split: str = "val") -> None:
    """:func:`tuning_tags` and :func:`tuning_metrics` written to MLflow run ``run_id``."""
    for key, value in tuning_tags(result, split).items():
        client.set_tag(run_id, key, value)
    for key, value in tuning_metrics(result, split).items():
        client.log_metric(run_id, key, value)
