"""How a slide is cut and read: the ``slide`` settings, the windows, the read level and scale factors, and the
columns of a slide's table (:mod:`nucleiseg.predict.slides.predict_slide` predicts the windows)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nucleiseg.predict.slides.reader import Slide
from nucleiseg.util.errors import ConfigError

if TYPE_CHECKING:
    from nucleiseg.inference.session import InferenceSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideSettings:
    """The ``slide`` config group (``conf/slide/default.yaml`` holds the defaults): window geometry, tissue
    detection, optional outputs."""

    window: int  # core of a window, in model pixels
    margin: int  # context around a core, in model pixels: wider than the largest nucleus
    thumbnail: int  # longest side of the low-resolution view (tissue, overview)
    min_tissue: float  # share of a window's core that must be tissue (grown by the margin); 0: any tissue
    labels: bool  # also write labels.tif (tiled, pyramidal, int32 nucleus ids)
    min_pixels: int  # a plain image larger than this goes through the windowed path too
    roi_mode: str  # regions of interest (--roi): within the tissue found, or in its place
    workers: int | str  # windows in flight at once (read, network, separation overlap); auto: sized for the model
    memory_gb: float  # workers=auto: what the windows in flight may hold, with what the process holds already
    max_workers: int  # workers=auto: at most this many windows in flight

    def __post_init__(self) -> None:
        if self.window < 64 or self.margin < 0 or self.margin * 2 >= self.window * 4:
            raise ConfigError(
                f"slide.window={self.window}, slide.margin={self.margin}: expected window >= 64, margin >= 0"
            )
        if not 0 <= self.min_tissue <= 1:
            raise ConfigError(f"slide.min_tissue={self.min_tissue}: expected a share between 0 and 1")
        if self.workers != "auto" and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(f"slide.workers={self.workers!r}: expected auto or a whole number >= 1")
        if not self.memory_gb > 0 or not isinstance(self.max_workers, int) or self.max_workers < 1:
            raise ConfigError(
                f"slide.memory_gb={self.memory_gb}, slide.max_workers={self.max_workers}: expected a positive size "
                "in GB and a whole number >= 1"
            )
        if self.roi_mode not in ("intersect", "replace"):
            raise ConfigError(f"slide.roi_mode={self.roi_mode!r}: expected intersect or replace")


@dataclass(frozen=True)
class Window:
    index: int
    x: int  # core origin at the read level
    y: int
    width: int  # core size at the read level (smaller at the slide's right and bottom edges)
    height: int


@dataclass(frozen=True)
class Plan:
    """How a slide is read: level, factors between level 0, the read level and the model, window geometry."""

    level: int
    level_downsample: float  # level-0 pixels per read-level pixel
    model_downsample: float  # level-0 pixels per model pixel (d)
    resize: float  # model pixels per read-level pixel (r = level_downsample / d)
    core: int  # read-level pixels
    margin: int  # read-level pixels
    slide_mpp: float | None
    model_mpp: float | None

    def windows(self, slide: Slide) -> list[Window]:
        width, height = slide.level_dimensions[self.level]
        return [
            Window(index, x, y, min(self.core, width - x), min(self.core, height - y))
            for index, (y, x) in enumerate(
                (y, x) for y in range(0, height, self.core) for x in range(0, width, self.core)
            )
        ]


def plan_slide(slide: Slide, session: InferenceSession, settings: SlideSettings) -> Plan:
    """The read level and scale factors from the slide's and the model's resolution (or the user's scale); a
    slide without a pixel size follows the rule of every input (:meth:`InferenceSession.input_mpp`)."""
    model_mpp = session.model_mpp
    slide_mpp = slide.mpp
    if session.settings.scale is not None:
        downsample = 1.0 / session.settings.scale
    elif model_mpp:
        slide_mpp = session.input_mpp(str(slide.path), slide.mpp)
        downsample = model_mpp / slide_mpp
    else:
        log.warning("%s: the model records no training resolution; reading at full resolution", session.source)
        downsample = 1.0
    level = slide.best_level(downsample)
    level_downsample = slide.level_downsamples[level]
    resize = level_downsample / downsample
    core = max(16, int(round(settings.window / resize / 16)) * 16)  # a multiple of 16: the label image's tiles
    margin = int(math.ceil(settings.margin / resize))
    return Plan(level, level_downsample, downsample, resize, core, margin, slide_mpp, model_mpp)


def slide_columns(plan: Plan, regions: bool = False) -> list[str]:
    """The columns of a slide's table (see :mod:`nucleiseg.postprocess.features` for the shared schema); with
    regions of interest, ``region`` names the one holding each nucleus."""
    from nucleiseg.postprocess.features import COLUMNS

    columns = ["image", "nucleus_id", "window", *COLUMNS[2:]]
    columns += ["area_um2", "perimeter_um", "equivalent_diameter_um"] if plan.slide_mpp else []
    return columns + (["region"] if regions else [])
