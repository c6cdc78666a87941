"""One inference session: every caller that runs a trained model builds it here.

``nucleiseg evaluate``, ``nucleiseg predict``, training's test pass (a Lightning callback), the report's figures
and the benchmark's inference figure all go through :class:`InferenceSession`, built from one typed
:class:`InferenceSettings` (the ``predict`` and ``postprocess`` config groups) and a model or checkpoint. It owns
device, precision, batch, tiling, channels-last, compile, stain normalisation, scale, threshold and the
post-processing that turns maps into nuclei.

Precedence for the values a checkpoint can carry (``threshold``, ``postprocess.*``): a value given (not null in
``conf/inference.yaml``) > the checkpoint's (tuned on validation, or the training config) > the default. The log says so
whenever a user value replaces the checkpoint's.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucleiseg.data.stain import from_state
from nucleiseg.inference.settings import (  # InferenceSettings: also by its old path, a config's _target_
    PLAUSIBLE_MPP,
    InferenceSettings,
)
from nucleiseg.inference.tiling import Segmenter
from nucleiseg.postprocess.instances import Postprocess, binarise, methods_for, separate_instances
from nucleiseg.util.devices import resolve_device, resolve_flag, resolve_inference_precision
from nucleiseg.util.errors import ConfigError

log = logging.getLogger(__name__)
# (name, uint8 HxWx3 image, int32 HxW instance labels): what evaluation iterates over
Item = tuple[str, np.ndarray, np.ndarray]


@dataclass
class Prediction:
    """Activated maps of one image, ``float32 CxHxW`` as the head lays them out (:mod:`nucleiseg.models.heads`):
    the nucleus probability (channel 0) and the head's own maps, by name."""

    maps: np.ndarray
    head: str = "binary"
    n_types: int = 0  # a typed model's classes: its last n_types + 1 maps are class probabilities

    @property
    def probability(self) -> np.ndarray:
        """``float32 HxW`` nucleus probability (every head)."""
        return self.maps[0]

    @property
    def class_probabilities(self) -> np.ndarray | None:
        """``float32 (K+1)xHxW`` class probabilities of a typed model (0: background), else None."""
        return self.maps[-(self.n_types + 1) :] if self.n_types else None

    def head_maps(self) -> dict[str, np.ndarray]:
        """The maps the head's separation method reads (:func:`separate_instances`): ``distance``; ``hv``;
        ``star_probability`` and ``star_distances``."""
        maps = self.maps[: -(self.n_types + 1)] if self.n_types else self.maps
        if self.head == "distance":
            return {"distance": maps[1]}
        if self.head == "hv":
            return {"hv": maps[1:3]}
        if self.head == "stardist":
            return {"star_probability": maps[1], "star_distances": maps[2:]}
        return {}


class InferenceSession:
    """A trained model with everything needed to run it the same way everywhere (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        hparams: Mapping[str, Any],
        settings: InferenceSettings,
        source: str = "model",
        path: str | Path | None = None,
    ) -> None:
        """``source``: how logs and outputs name the model (a path, or a registered name); ``path``: its file."""
        self.settings, self.hparams, self.source = settings, dict(hparams), source
        self.path = Path(path) if path is not None else None
        self.head = str(self.hparams.get("head", "binary"))
        self.classes: list[str] = [str(name) for name in self.hparams.get("types") or []]  # a typed model's
        self.device = resolve_device(settings.device)
        self.precision = resolve_inference_precision(settings.precision, self.device)
        self.channels_last = resolve_flag(settings.channels_last, self.device, "model.channels_last")
        self.threshold, self.postprocess, self.origins = self._resolve(settings)
        self.normaliser = from_state(self.hparams.get("stain"))
        self.model = model
        if settings.compile:
            model.compile()  # in place: state_dict keys stay those of the plain model
        self.runner = self._runner(model)
        self._segmenters: dict[tuple[float, bool], Segmenter] = {}

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, settings: InferenceSettings, label: str | None = None
    ) -> InferenceSession:
        """From a ``.ckpt`` or ``.safetensors`` file; ``label`` names it (default: its path)."""
        from nucleiseg.inference.checkpoint import load_checkpoint

        model, hparams = load_checkpoint(path)
        return cls(model, hparams, settings, source=label or str(path), path=path)

    def _uses_onnx(self) -> bool:
        """``backend=onnxruntime`` on a CPU; ``auto``: on a CPU, for a model read from a file (exported once per
        file into the cache), in fp32 (precision auto or 32-true), not compiled, when onnxruntime is installed.
        ONNX Runtime computes what eager PyTorch computes in fp32 (the same nuclei, measured on a whole slide), and
        faster on the CPUs we measured; bf16 autocast, the alternative on CPUs with native bf16, moves about 1% of
        the nuclei (experiments/benchmarks.md)."""
        backend = self.settings.backend
        if self.device.type != "cpu" or backend == "torch":
            return False
        if backend == "onnxruntime":
            return True
        return (
            self.path is not None
            and self.settings.precision in ("auto", "32-true")
            and not self.settings.compile
            and importlib.util.find_spec("onnxruntime") is not None
        )

    def _runner(self, model: torch.nn.Module) -> torch.nn.Module:
        """What computes the logits: the model, or (:meth:`_uses_onnx`) its ONNX Runtime copy, in fp32."""
        if not self._uses_onnx():
            return model
        from nucleiseg.inference.onnx_backend import onnx_model

        key = f"{self.path.resolve() if self.path else id(model)}:{self.path.stat().st_mtime_ns if self.path else 0}"
        runner = onnx_model(model, key, torch.get_num_threads())
        if runner is not model:
            self.precision = "32-true"  # ONNX Runtime computes in fp32, whatever autocast would have done
        return runner

    @contextmanager
    def network_threads(self, threads: int) -> Iterator[None]:
        """Within the block, the ONNX Runtime network runs with ``threads`` intra-op threads (PyTorch's thread
        count is process-wide and stays as it is)."""
        switch = getattr(self.runner, "use_threads", None)
        previous = switch(threads) if switch else None
        try:
            yield
        finally:
            if switch:
                switch(previous)

    def _resolve(self, settings: InferenceSettings) -> tuple[float, Postprocess, dict[str, str]]:
        """Threshold and post-processing by precedence: user > checkpoint > default, with where each came from."""
        tuned_on = self.hparams.get("postprocess_tuned_on")
        carried = "checkpoint" + (f" (tuned on {tuned_on})" if tuned_on else "")
        checkpoint_post = dict(self.hparams.get("postprocess") or {})
        origins: dict[str, str] = {}
        if settings.threshold is not None:
            threshold, origins["threshold"] = settings.threshold, "user"
            self._say_replaced("threshold", settings.threshold, self.hparams.get("threshold"))
        elif self.hparams.get("threshold") is not None:
            threshold, origins["threshold"] = float(self.hparams["threshold"]), carried
        else:
            threshold, origins["threshold"] = settings.default_threshold, "default"
        values = {}
        for name in Postprocess.__dataclass_fields__:
            if name in settings.postprocess:
                values[name], origins[f"postprocess.{name}"] = settings.postprocess[name], "user"
                self._say_replaced(f"postprocess.{name}", settings.postprocess[name], checkpoint_post.get(name))
            elif name in checkpoint_post:
                values[name], origins[f"postprocess.{name}"] = checkpoint_post[name], carried
            else:
                origins[f"postprocess.{name}"] = "default"
        return float(threshold), Postprocess.merged(settings.default_postprocess, values).resolved(self.head), origins

    def _say_replaced(self, key: str, user: Any, carried: Any) -> None:
        if carried is not None and carried != user:
            log.info("%s=%s (given) replaces the checkpoint's %s=%s", key, user, key, carried)

    # -- running the model -------------------------------------------------------------------------------------
    def segmenter(self, scale: float = 1.0, normalise: bool = True) -> Segmenter:
        """The tiling engine at ``scale`` (with or without the checkpoint's stain normalisation)."""
        key = (float(scale), bool(normalise))
        if key not in self._segmenters:
            self._segmenters[key] = Segmenter(
                self.runner,
                self.device,
                self.precision,
                tile_size=self.settings.tile_size,
                overlap=self.settings.overlap,
                tta=self.settings.tta,
                batch_size=self.settings.batch_size,
                channels_last=self.channels_last,
                normaliser=self.normaliser if normalise else None,
                scale=scale,
                head=self.head,
                n_types=len(self.classes),
            )
        return self._segmenters[key]

    @property
    def model_mpp(self) -> float | None:
        """Micrometres per pixel the model was trained at (None: it does not say)."""
        value = (self.hparams.get("data") or {}).get("model_mpp")
        return float(value) if value else None

    def input_mpp(self, name: str, found: float | None = None) -> float | None:
        """The pixel size of input ``name``: the user's (``--mpp``), else ``found`` in the file, else the assumed
        40x (``predict.assumed_mpp``, with a warning naming the input), else refused. The one rule for images and
        slides (None when the model records no resolution: then nothing is resampled)."""
        low, high = PLAUSIBLE_MPP
        if self.settings.microns_per_pixel is None and found is not None and not low <= found <= high:
            raise ConfigError(
                f"{name}: the file gives {found} um/px, outside {low}..{high}; give the right one with --mpp"
            )
        mpp = self.settings.microns_per_pixel or found
        if mpp or self.model_mpp is None:
            return mpp
        if self.settings.assumed_mpp is None:
            raise ConfigError(
                f"{name}: no pixel size (micrometres per pixel) in the file; give it with --mpp (e.g. --mpp 0.25 for "
                "40x) or the resampling factor with --scale"
            )
        log.warning(
            "%s: pixel size unknown; assumed %s um/px (40x) and resampled to the model's %s um/px; give --mpp if it "
            "is another magnification",
            name,
            self.settings.assumed_mpp,
            self.model_mpp,
        )
        return self.settings.assumed_mpp

    def scale_for(self, microns_per_pixel: float | None = None, dataset: str | None = None) -> float:
        """Resampling factor for an input of ``microns_per_pixel`` (see :meth:`input_mpp`): the user's ``scale``,
        else the input's pixel size over the model's, else the training scale of ``dataset`` (e.g. MoNuSeg), else
        1 (a model that records no resolution)."""
        if self.settings.scale is not None:
            return self.settings.scale
        mpp = microns_per_pixel or self.settings.microns_per_pixel
        if mpp and self.model_mpp:
            return float(mpp) / self.model_mpp
        if dataset is not None:
            return float(((self.hparams.get("data") or {}).get("dataset_scale") or {}).get(dataset, 1.0))
        return 1.0

    def predict(
        self, image: np.ndarray, scale: float = 1.0, normalise: bool = True, progress: Callable | None = None
    ) -> Prediction:
        """``uint8 HxWx3`` of any size -> :class:`Prediction` at the input's size."""
        return Prediction(self.segmenter(scale, normalise).predict(image, progress), self.head, len(self.classes))

    def binarise(self, probability: np.ndarray) -> np.ndarray:
        """The nucleus mask ``bool HxW`` of a probability map at the session's threshold."""
        return binarise(probability, self.threshold)

    @property
    def trained_on_synthetic(self) -> bool:
        return bool((self.hparams.get("data") or {}).get("synthetic"))

    def warn_if_synthetic(self, applied_to: str) -> None:
        """One warning when a smoke-test model (trained on synthetic tiles) is applied to real data."""
        if self.trained_on_synthetic:
            log.warning(
                "%s was trained on synthetic tiles (data=synthetic): a smoke-test model, not one for %s; use the "
                "default model (no --model), train on the real data (data=paper) or use experiment=release",
                self.source,
                applied_to,
            )

    def instances(self, prediction: Prediction, method: str | None = None) -> np.ndarray:
        """Instance labels ``int32 HxW`` of a prediction, with the session's post-processing (or ``method``)."""
        settings = self.postprocess if method is None else replace(self.postprocess, method=method)
        return separate_instances(prediction.probability, self.threshold, settings, prediction.head_maps())

    def nucleus_classes(self, labels: np.ndarray, prediction: Prediction) -> tuple[np.ndarray, np.ndarray] | None:
        """A typed model's class of each nucleus of ``labels`` (1..K, :attr:`classes`) and its probability, indexed
        by label (:func:`nucleiseg.postprocess.types.nucleus_classes`); None for an untyped model."""
        if prediction.class_probabilities is None:
            return None
        from nucleiseg.postprocess.types import nucleus_classes

        return nucleus_classes(labels, prediction.class_probabilities)

    def evaluate(
        self,
        items: Iterable[Item],
        prefix: str,
        scale: float = 1.0,
        normalise: bool = True,
        *,
        iou_threshold: float,
        type_match_um: float | None = None,
        on_prediction: Callable[[int, np.ndarray, np.ndarray, Prediction], None] | None = None,
    ) -> dict[str, float]:
        """Pixel metrics (whole split and per image) and instance metrics for every separation method the head
        supports, keyed ``PREFIX/metric`` and ``PREFIX/metric_METHOD``; ``on_prediction(index, image, mask,
        prediction)`` sees each prediction (overlays) without predicting twice. A typed model on items that carry
        their nuclei's classes (a 4th element, ``int HxW``) is also scored by class
        (:class:`nucleiseg.metrics.typed.TypedMetrics`, its own separation's nuclei; HoVer-Net's F_c pairs
        centroids within ``type_match_um`` micrometres), keyed ``PREFIX/mpq_plus``, ``PREFIX/pq_CLASS`` ..."""
        from nucleiseg.metrics.scoring import Scorer  # (torchmetrics: only when scoring, not for predict)

        scorer = Scorer(self.threshold, iou_threshold, methods_for(self.head))
        typed = self._typed_metrics(type_match_um)
        for index, (_, image, mask, *rest) in enumerate(items):
            prediction = self.predict(image, scale, normalise)
            separated = {m: self.instances(prediction, m) for m in scorer.methods}
            scorer.update(mask, prediction.probability, separated)
            if typed is not None and rest:
                labels = separated[self.postprocess.method]
                classes, _ = self.nucleus_classes(labels, prediction)
                typed.update(*_classified_only(mask, rest[0], labels, classes))
            if on_prediction is not None:
                on_prediction(index, image, mask, prediction)
        if not scorer.n_images:
            raise ConfigError(f"{prefix}: no image to evaluate")
        results = scorer.compute(prefix)
        if typed is not None and typed.per_image:
            results.update({f"{prefix}/{key}": value for key, value in typed.compute().items()})
        return results

    def _typed_metrics(self, type_match_um: float | None) -> Any:
        """The per-class accumulator of a typed model (None when untyped or no matching radius is given): the
        radius in the model's pixels from its resolution (HoVer-Net's 12 px at 40x is 3 um)."""
        if not self.classes or type_match_um is None:
            return None
        from nucleiseg.metrics.typed import TypedMetrics

        mpp = self.model_mpp or self.settings.assumed_mpp  # a model without a resolution: the assumed 40x
        if not mpp:
            log.warning(
                "%s: no resolution to match nuclei centroids within %s um: no metrics by class",
                self.source,
                type_match_um,
            )
            return None
        return TypedMetrics(self.classes, type_match_um / mpp)

    def measure_speed(self, image_size: int, batch_size: int, warmup: int, iterations: int) -> dict[str, Any]:
        """Inference images/s at ``image_size``, with this session's device, precision and memory format."""
        from nucleiseg.inference.speed import measure_inference

        return measure_inference(
            self.model, image_size, batch_size, self.precision, self.device, warmup, iterations, self.channels_last
        )

    def describe(self) -> dict[str, Any]:
        """What the session runs with, and where each value came from (for logs, JSON output and MLflow)."""
        return {
            "checkpoint": self.source,
            "encoder": self.hparams.get("encoder"),
            "head": self.head,
            "device": str(self.device),
            "precision": self.precision,
            "batch_size": self.settings.batch_size,
            "tile_size": self.settings.tile_size,
            "tta": self.settings.tta,
            "backend": "onnxruntime" if self.runner is not self.model else "torch",
            "threshold": self.threshold,
            "postprocess": self.postprocess.as_dict(),
            "tuned_on": self.hparams.get("postprocess_tuned_on") or "default",
            "origins": dict(self.origins),
        }


def _classified_only(
    truth: np.ndarray, true_types: np.ndarray, labels: np.ndarray, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """What the scores by class count: true nuclei with a class (an unclassified annotation is left out of them, not
    taken for a miss) and predicted nuclei with one (a nucleus every pixel of which said background is left out)."""
    truth = np.where(true_types > 0, truth, 0)
    labels = np.where(np.asarray(classes)[labels] > 0, labels, 0)
    kept = np.unique(labels[labels > 0])
    return truth, true_types, labels, {int(k): int(classes[k]) for k in kept}


def iterate_split(folder: str | Path, split: str) -> Iterator[Item]:
    """Items of a prepared split, named ``source_id:augmentation`` (see :mod:`nucleiseg.data.prepare`)."""
    from nucleiseg.data.datamodule import load_split
    from nucleiseg.data.prepare import load_manifest

    manifest = load_manifest(folder)
    if split not in manifest["splits"]:
        raise ConfigError(f"split={split!r}: expected one of {sorted(manifest['splits'])}")
    pairs = load_split(folder, split)
    for record in manifest["splits"][split]:
        item = pairs[record["index"]]
        name, image = f"{record['source_id']}:{record['augmentation']}", item["image"].permute(1, 2, 0).numpy()
        if "types" in item:  # a typed dataset: each pixel's nucleus class too
            yield name, image, item["mask"].numpy(), item["types"].numpy()
        else:
            yield name, image, item["mask"].numpy()
