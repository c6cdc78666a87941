"""Evaluate a checkpoint without training (``nucleiseg evaluate``): the paper's metrics on a prepared split
or on a folder of image/mask pairs, inference speed, logged to MLflow.

Prediction goes through :class:`nucleiseg.inference.tiling.Segmenter`, the same path ``nucleiseg predict``
uses, so an evaluated model and a deployed one cannot disagree about preprocessing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from nucleiseg.data.datamodule import load_split
from nucleiseg.data.image_io import read_mask, read_rgb
from nucleiseg.data.prepare import load_manifest, prepare_dataset
from nucleiseg.data.stain import from_state
from nucleiseg.devices import cuda_available, device_name, resolve_precision
from nucleiseg.errors import ConfigError, DatasetLayoutError
from nucleiseg.inference.checkpoint import load_checkpoint
from nucleiseg.inference.speed import measure_inference
from nucleiseg.inference.tiling import Segmenter
from nucleiseg.metrics.instance import InstanceMetrics
from nucleiseg.metrics.pixel import PerImageOverlap, pixel_metrics
from nucleiseg.postprocess.instances import METHODS, separate_with_config

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def folder_pairs(images: str | Path, masks: str | Path) -> list[tuple[Path, Path]]:
    """Pair ``images/NAME.*`` with ``masks/NAME.*`` by file stem; every image needs a mask."""
    images, masks = Path(images), Path(masks)
    for folder in (images, masks):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: folder not found")
    mask_by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.stem not in mask_by_stem:
            raise DatasetLayoutError(f"{image}: no mask named {image.stem}.* in {masks}")
        pairs.append((image, mask_by_stem[image.stem]))
    if not pairs:
        raise DatasetLayoutError(f"{images}: no image (.png/.tif/.jpg) found")
    return pairs


def _split_items(folder: Path, manifest: dict, split: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    pairs = load_split(folder, split)
    for record in manifest["splits"][split]:
        item = pairs[record["index"]]
        yield (
            f"{record['source_id']}:{record['augmentation']}",
            item["image"].permute(1, 2, 0).numpy(),
            item["mask"].numpy(),
        )


def _folder_items(images: Path, masks: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for image_path, mask_path in folder_pairs(images, masks):
        image, mask = read_rgb(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise ConfigError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        yield image_path.stem, image, mask


def score(segmenter: Segmenter, items, threshold: float, postprocess: Mapping, prefix: str) -> dict[str, Any]:
    """Pixel metrics (whole split and per image) and instance metrics with watershed and with connected
    components, of ``segmenter`` on ``(name, image uint8 HxWx3, instance_mask int32 HxW)`` items."""
    # computed by this process alone, also on rank 0 after a DDP run: no cross-process sync
    metrics, per_image = pixel_metrics(threshold, sync_on_compute=False), PerImageOverlap(threshold, False)
    instances = {method: InstanceMetrics(postprocess.get("iou_threshold", 0.5)) for method in METHODS}
    n_images = 0
    for _, image, mask in items:
        probability = segmenter.probability(image)
        prediction, target = torch.from_numpy(probability)[None], torch.from_numpy(mask > 0)[None].int()
        metrics.update(prediction, target)
        per_image.update(prediction, target)
        for method, accumulator in instances.items():
            accumulator.update(mask, separate_with_config(probability, threshold, postprocess, method))
        n_images += 1
    if not n_images:
        raise ConfigError(f"{prefix}: no image to evaluate")
    results = {f"{prefix}/{k}": float(v) for k, v in metrics.compute().items()}
    results.update({f"{prefix}/{k}": float(v) for k, v in per_image.compute().items()})
    for method, accumulator in instances.items():
        results.update({f"{prefix}/{k}_{method}": v for k, v in accumulator.compute().items()})
    results["n_images"] = n_images
    return results


def evaluate(
    checkpoint: str | Path,
    cfg: DictConfig,
    split: str = "test",
    images: str | Path | None = None,
    masks: str | Path | None = None,
    log_to_mlflow: bool = True,
    study: str = "evaluate",
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on a prepared split, or on ``images``/``masks`` folders when given."""
    if (images is None) != (masks is None):
        raise ConfigError("--images and --masks go together")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split={split!r}: expected train, val or test")
    model, hparams = load_checkpoint(checkpoint)
    accelerator = cfg.trainer.accelerator
    device = "cuda" if cuda_available(accelerator) else "cpu"
    precision = resolve_precision(cfg.trainer.precision, accelerator)
    model_stain = hparams.get("stain")
    if images is not None:
        items, normalise = _folder_items(Path(images), Path(masks)), model_stain
    else:
        folder = prepare_dataset(cfg.data)
        manifest = load_manifest(folder)
        items, normalise = _split_items(folder, manifest, split), None
        if manifest.get("stain") and manifest["stain"] != model_stain:
            raise ConfigError(
                f"{folder}: the split was stain-normalised differently from this checkpoint's training "
                "data; prepare it with data.stain.method=none or the same reference"
            )
        if not manifest.get("stain"):
            normalise = model_stain  # raw split, model trained on normalised images: normalise like training
    segmenter = Segmenter(
        model,
        device,
        precision,
        tile_size=cfg.predict.tile_size,
        overlap=cfg.predict.overlap,
        tta=cfg.predict.tta,
        normaliser=from_state(normalise),
        scale=cfg.predict.scale if images is not None else 1.0,  # prepared splits are at training scale already
    )
    threshold = float(hparams.get("threshold", cfg.threshold))
    prefix = "folder" if images is not None else split
    results = score(segmenter, items, threshold, cfg.postprocess, prefix)
    speed = measure_inference(
        model, cfg.speed.image_size, cfg.speed.batch_size, precision, device, cfg.speed.warmup, cfg.speed.iterations
    )
    results[f"{prefix}/images_per_second"] = speed["images_per_second"]
    if log_to_mlflow:
        _log(cfg, study, checkpoint, hparams, results, speed, images or split)
    return results


def _log(cfg: DictConfig, study: str, checkpoint, hparams, results, speed, source) -> None:
    import mlflow

    from nucleiseg.tracking.mlflow_store import use_experiment

    use_experiment(cfg.logger, study)
    with mlflow.start_run(run_name=f"evaluate-{Path(checkpoint).parent.parent.name}"):
        mlflow.set_tags(
            {
                "checkpoint": str(Path(checkpoint).resolve()),
                "encoder": hparams["encoder"],
                "pretrained": str(hparams.get("pretrained", False)).lower(),
                "evaluated_on": str(source),
                "device": device_name(cfg.trainer.accelerator),
                **{f"speed.{k}": str(v) for k, v in speed.items() if k != "images_per_second"},
            }
        )
        mlflow.log_metrics(results)
