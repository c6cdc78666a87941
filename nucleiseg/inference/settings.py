"""How to run a model (the ``predict`` config group), checked when built: :class:`InferenceSettings`, and the range
of pixel sizes a nucleus can be segmented at."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nucleiseg.postprocess.instances import Postprocess
from nucleiseg.util.errors import ConfigError

BACKENDS = ("auto", "torch", "onnxruntime")
# Pixel sizes a nucleus can be segmented at: finer than any light microscope (about 0.1 um/px at 100x oil) is a
# typo, coarser than about 5x (2 um/px: a nucleus is a few pixels) leaves nothing to separate. Outside, the
# resampling to the model's resolution allocates terabytes or squashes the image to a few pixels: refused in one line.
PLAUSIBLE_MPP = (0.05, 5.0)
PLAUSIBLE_SCALE = (0.01, 20.0)


def check_pixel_size(value: float | None, what: str) -> float | None:
    """``value`` (micrometres per pixel) if it is a plausible pixel size; None passes (unknown)."""
    if value is None:
        return None
    low, high = PLAUSIBLE_MPP
    if not isinstance(value, int | float) or not low <= float(value) <= high:
        raise ConfigError(
            f"{what}={value}: expected a pixel size between {low} and {high} micrometres per pixel (a 40x scan is "
            "about 0.25, 20x about 0.5)"
        )
    return float(value)


@dataclass(frozen=True)
class InferenceSettings:
    """How to run a model: the ``predict`` config group (``conf/predict/default.yaml`` holds the defaults; built by
    :func:`nucleiseg.config.settings.inference_settings`, or :func:`nucleiseg.config.settings.defaults` without a
    config).
    ``threshold`` and ``postprocess`` hold only the values given (``None`` / missing keys: the checkpoint's);
    ``scale=None``: decided per input (1 for images already at the model's resolution; from ``microns_per_pixel``
    and the checkpoint's resolution when both are known)."""

    device: str  # auto | cpu | gpu | cuda | cuda:K
    precision: str  # auto: bf16 on GPUs and on CPUs with native bf16, else fp32
    batch_size: int  # tiles per forward pass
    tile_size: int
    overlap: float
    tta: bool
    compile: bool
    channels_last: bool | str
    backend: str  # auto | torch | onnxruntime (CPU only: the network through ONNX Runtime, checked)
    scale: float | None
    microns_per_pixel: float | None
    assumed_mpp: float | None  # an input of unknown pixel size is taken to be this (40x); None: refused
    # the values of conf/ for what neither the user nor the checkpoint gives (passed down by whoever composed the
    # config: nucleiseg.config.settings), so this class never reaches up to the composed config itself
    default_threshold: float
    default_postprocess: Mapping[str, Any]  # every postprocess parameter
    threshold: float | None = None  # None: the checkpoint's (not a default: "nothing given")
    postprocess: Mapping[str, Any] = field(default_factory=dict)  # only the values given

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"predict.batch_size={self.batch_size!r}: expected a whole number >= 1")
        if not isinstance(self.tile_size, int) or self.tile_size < 32 or self.tile_size % 32:
            raise ConfigError(f"predict.tile_size={self.tile_size!r}: expected a positive multiple of 32")
        low, high = PLAUSIBLE_SCALE
        if self.scale is not None and not low <= self.scale <= high:
            raise ConfigError(
                f"predict.scale={self.scale}: expected a resampling factor between {low} and {high} (model pixels per "
                "input pixel)"
            )
        check_pixel_size(self.microns_per_pixel, "predict.microns_per_pixel (--mpp)")
        if self.backend not in BACKENDS:
            raise ConfigError(f"predict.backend={self.backend!r}: expected one of {', '.join(BACKENDS)}")
        check_pixel_size(self.assumed_mpp, "predict.assumed_mpp")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError(f"threshold={self.threshold}: expected a probability between 0 and 1")
        Postprocess.check_names(self.postprocess)  # names checked now, values when merged with the checkpoint's
