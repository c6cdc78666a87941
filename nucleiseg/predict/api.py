"""One call from Python, as StarDist's ``predict_instances`` and Cellpose's ``eval`` give their users::

    import nucleiseg
    labels, nuclei = nucleiseg.segment("tile.png", mpp=0.25)           # int32 HxW labels, one row per nucleus
    nuclei = nucleiseg.segment_slide("slide.svs", out="nuclei")        # a whole slide, into a folder

Both run the inference session ``nucleiseg predict`` runs (same model loading, resampling to the model's
resolution, post-processing and measurements); ``segment_slide`` *is* ``predict`` on one slide.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nucleiseg.util.errors import NucleisegError

if TYPE_CHECKING:
    from nucleiseg.inference.session import InferenceSession


@lru_cache(maxsize=4)
def session_for(
    model: str | None = "default", mpp: float | None = None, overrides: tuple[str, ...] = ()
) -> InferenceSession:
    """The inference session of ``model`` (a name, file, URL or ``models:/NAME/VERSION``) with ``predict.*`` and
    post-processing ``overrides`` (``("predict.tta=true", "postprocess.min_area=20")``); kept for the next call."""
    from nucleiseg.config.compose import compose
    from nucleiseg.config.settings import inference_settings
    from nucleiseg.inference.session import InferenceSession
    from nucleiseg.predict.model_sources import resolve_model

    cfg = compose([*overrides, *([f"predict.microns_per_pixel={mpp}"] if mpp is not None else [])], "inference")
    path, label = resolve_model(None if model in (None, "default") else model, None, list(overrides))
    return InferenceSession.from_checkpoint(path, inference_settings(cfg), label=label)


def segment(
    image: np.ndarray | str | Path,
    model: str | None = "default",
    mpp: float | None = None,
    overrides: tuple[str, ...] | list[str] = (),
) -> tuple[np.ndarray, pd.DataFrame]:
    """Nuclei of one image: ``(instance labels int32 HxW, table)``, the table one row per nucleus in the schema
    of ``features.csv`` (``nucleus_id`` is the label; micrometre columns when the pixel size is known).

    ``image``: ``uint8 HxWx3`` RGB (or a path to one); ``mpp``: its micrometres per pixel (None: 40x assumed, with
    a warning, as ``predict`` does)."""
    from nucleiseg.data.image_io import read_rgb
    from nucleiseg.postprocess.features import nucleus_features

    session = session_for(model, mpp, tuple(overrides))
    if isinstance(image, str | Path):
        name, image = Path(image).stem, read_rgb(image)
    else:
        name, image = "image", np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise NucleisegError(f"segment: image of {image.dtype} {image.shape}; expected uint8 HxWx3 RGB")
    pixel_size = session.input_mpp(name) if session.settings.scale is None else session.settings.microns_per_pixel
    prediction = session.predict(image, session.scale_for(pixel_size))
    labels = session.instances(prediction)
    return labels, nucleus_features(image, labels, name, pixel_size)


def segment_slide(
    slide: str | Path,
    out: str | Path,
    model: str | None = "default",
    mpp: float | None = None,
    labels: bool = False,
    overwrite: bool = False,
    overrides: tuple[str, ...] | list[str] = (),
) -> pd.DataFrame:
    """Nuclei of a whole slide, written to ``out/NAME/`` (GeoJSON for QuPath, tables, overview; ``labels.tif``
    with ``labels``) exactly as ``nucleiseg predict`` writes them; returns the nuclei table (slide coordinates)."""
    from nucleiseg.config.compose import compose
    from nucleiseg.config.settings import build
    from nucleiseg.predict.run import output_name, predict

    session = session_for(model, mpp, tuple(overrides))
    settings = build(compose(list(overrides), "inference").slide, labels=labels, min_pixels=0)
    summary = predict([slide], out, session, overwrite=overwrite, progress="none", slide_settings=settings)
    problems = summary.failed + summary.not_written
    if problems:
        raise NucleisegError(f"{problems[0][0]}: {problems[0][1]}")
    return pd.read_csv(Path(out) / output_name(Path(slide)) / "features.csv")
