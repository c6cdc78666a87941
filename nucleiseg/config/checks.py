"""The values a user types, checked before anything heavy is imported (well under 3 s on 2 cores): a value that is
not one of a key's choices is refused in one line with the closest choice, a number out of its range with the
range. The choices live with the code that uses them; these are light copies, and a test keeps them equal
(tests/test_cli.py)."""

from __future__ import annotations

import difflib
from typing import Any

ENCODER_NAMES = (
    "unet",
    "unet_bn",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "densenet121",
    "densenet201",
)
CHOICES: dict[str, tuple[str, ...]] = {
    "encoder": ENCODER_NAMES,
    "model.head": ("binary", "distance", "hv", "stardist"),
    "postprocess.method": ("auto", "components", "watershed", "distance", "hover", "stardist"),
    "test_checkpoint": ("last", "best"),
    "progress_bar": ("auto", "rich", "plain", "none"),
    "data.protocol.split": ("paper", "by_patient", "none", "folds"),
    "data.protocol.test_dataset": (
        "tnbc",
        "monuseg",
        "pannuke",
        "consep",
        "lizard",
        "conic",
        "monusac",
        "typed_folder",
        "synthetic_typed",
    ),
    "tune.objective": ("aji", "aji_plus", "pq"),
    "tune.balance": ("dataset", "image"),
    "data.stain.method": ("none", "macenko", "reinhard"),
    "slide.roi_mode": ("intersect", "replace"),
    "predict.backend": ("auto", "torch", "onnxruntime"),
    "cohort.launcher": ("local", "local_parallel", "slurm", "slurm_local"),
}
BOOLEANS = ("pretrained", "resume", "skip_finished", "dry_run", "deterministic", "predict.tta")
# key -> (low, high, both ends open?) for numbers
RANGES: dict[str, tuple[float, float, bool]] = {
    "threshold": (0.0, 1.0, True),
    "optimizer.lr": (0.0, float("inf"), True),
    "data.protocol.val_fraction": (0.0, 1.0, False),
    "metrics.iou_threshold": (0.0, 1.0, True),
    "predict.overlap": (0.0, 1.0, False),
}
WHOLE_AT_LEAST = {"trainer.max_epochs": 1, "data.loader.batch_size": 1, "data.protocol.image_size": 32, "seed": 0}


def _values(override: Any) -> list[Any]:
    """The value(s) of a parsed Hydra override: a sweep's each value, else the one value."""
    if override.is_sweep_override():
        try:
            return list(override.sweep_iterator())
        except Exception:  # noqa: BLE001 - range()/glob() sweeps: checked when composed
            return []
    return [override.value()]


def check_value(key: str, value: Any) -> str | None:
    """One line saying what is wrong with ``key=value``, or None."""
    if key in CHOICES and value not in CHOICES[key]:
        close = difflib.get_close_matches(str(value), CHOICES[key], n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"{key}={value!r} is not one of {', '.join(CHOICES[key])}{hint}"
    if key in BOOLEANS and not isinstance(value, bool):
        return f"{key}={value!r}: expected true or false"
    if key in RANGES:
        low, high, open_ends = RANGES[key]
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        inside = number is not None and (low < number < high if open_ends else low <= number < high)
        if not inside:
            bounds = f"between {low:g} and {high:g}" if high != float("inf") else f"above {low:g}"
            return f"{key}={value!r}: expected a number {bounds}"
    if key in WHOLE_AT_LEAST:
        low = WHOLE_AT_LEAST[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            return f"{key}={value!r}: expected a whole number >= {low}"
    return None


def check_overrides(words: list[str]) -> str | None:
    """The first problem among command-line overrides (sweeps: every value), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides([w for w in words if "=" in w and not w.startswith("-")])
    except HydraException:
        return None  # a syntax error: Hydra's own message says where
    for override in parsed:
        if override.is_delete():
            continue
        key = override.key_or_group.lstrip("+~")
        for value in _values(override):
            problem = check_value(key, value)
            if problem:
                return problem
    return None
