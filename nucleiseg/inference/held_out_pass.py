"""Training's test pass through the inference session: the same path as ``nucleiseg evaluate``, as a callback.

At the end of ``trainer.test`` rank 0 evaluates the whole held-out split once with an
:class:`~nucleiseg.inference.session.InferenceSession` over the module's weights: pixel metrics, per-image
metrics, instance metrics for each separation method, the prediction overlays (from the same predictions) and,
when asked, the inference speed. Under DDP the test loader may repeat images to balance the ranks; evaluating the
split on one rank keeps the numbers exact.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from nucleiseg.inference.overlays import comparison_panel
from nucleiseg.inference.session import InferenceSession, Prediction, iterate_split
from nucleiseg.inference.settings import InferenceSettings
from nucleiseg.util.writing import png_bytes, write_bytes_atomic


class SessionTestPass(L.Callback):
    """Evaluate the test split with the session at the end of ``trainer.test``; results in :attr:`results`.

    ``speed``: ``None`` (no timing) or ``{"image_size", "batch_size", "warmup", "iterations"}``.
    ``log_artifact(path, folder)``: where overlay PNGs go (MLflow), ``overlays`` of them.
    """

    def __init__(
        self,
        settings: InferenceSettings,
        iou_threshold: float,
        type_match_um: float | None = None,
        speed: Mapping[str, int] | None = None,
        overlays: int = 0,
        log_artifact: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.settings, self.iou_threshold, self.speed = settings, iou_threshold, speed
        self.type_match_um = type_match_um
        self.overlays, self.log_artifact = overlays, log_artifact
        self.results: dict[str, Any] = {}
        self.session: InferenceSession | None = None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        # the module's own device, whatever predict.device says: the test runs where training ran
        settings = replace(self.settings, device=str(pl_module.device), compile=False)
        session = InferenceSession(pl_module.model, dict(pl_module.hparams), settings, source="training")
        self.session = session
        folder = trainer.datamodule.folder
        with tempfile.TemporaryDirectory() as scratch:
            self.results = session.evaluate(
                iterate_split(folder, "test"),
                "test",
                normalise=False,  # the prepared split is already normalised as the model was trained
                iou_threshold=self.iou_threshold,
                type_match_um=self.type_match_um,
                on_prediction=lambda *args: self._overlay(Path(scratch), *args),
            )
        if self.speed:
            measured = session.measure_speed(**self.speed)
            self.results["test/images_per_second"] = measured["images_per_second"]
            self.results["speed"] = measured
        pl_module.train(False)

    def _overlay(self, scratch: Path, index: int, image: np.ndarray, mask: np.ndarray, prediction: Prediction) -> None:
        if index >= self.overlays or self.log_artifact is None:
            return
        panel = comparison_panel(image, mask > 0, self.session.binarise(prediction.probability))
        path = scratch / f"test_{index:02d}.png"
        write_bytes_atomic(path, png_bytes(panel))
        self.log_artifact(path, "overlays")
