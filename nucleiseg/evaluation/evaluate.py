"""Evaluate a checkpoint without training (``nucleiseg evaluate``): the paper's pixel metrics and instance metrics
on the checkpoint's own held-out split, another prepared split, a folder of image/mask pairs, or the official
MoNuSeg 2018 test release; optionally the inference speed; logged to MLflow.

Prediction goes through :class:`nucleiseg.inference.session.InferenceSession`, the path ``nucleiseg predict``
and training's test pass use, so an evaluated model and a deployed one cannot disagree about preprocessing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.data.image_io import IMAGE_SUFFIXES, read_mask_and_kind, read_rgb
from nucleiseg.data.prepare import load_manifest
from nucleiseg.inference.prepared import split_source
from nucleiseg.inference.session import InferenceSession, Item, iterate_split
from nucleiseg.postprocess.instances import methods_for
from nucleiseg.util.errors import ConfigError, DatasetLayoutError

log = logging.getLogger(__name__)
INSTANCE_KEYS = ("aji", "aji_plus", "pq", "dq", "sq", "object_precision", "object_recall", "object_f1")
PIXEL_KEYS = ("jaccard", "f1", "recall", "precision", "accuracy", "jaccard_image_mean", "f1_image_mean")


def folder_pairs(images: str | Path, masks: str | Path) -> list[tuple[Path, Path]]:
    """Pair ``images/NAME.*`` with ``masks/NAME.*`` by file stem; every image needs exactly one mask."""
    images, masks = Path(images), Path(masks)
    for folder in (images, masks):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: folder not found")
    mask_by_stem: dict[str, Path] = {}
    for path in sorted(masks.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in mask_by_stem:
                raise DatasetLayoutError(
                    f"{masks}: two masks named {path.stem} ({mask_by_stem[path.stem].name}, {path.name}); keep one"
                )
            mask_by_stem[path.stem] = path
    pairs = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.stem not in mask_by_stem:
            raise DatasetLayoutError(f"{image}: no mask named {image.stem}.* in {masks}")
        pairs.append((image, mask_by_stem[image.stem]))
    if not pairs:
        raise DatasetLayoutError(f"{images}: no image ({', '.join(IMAGE_SUFFIXES)}) found")
    return pairs


def _checked(name: str, image: np.ndarray, mask: np.ndarray, mask_path: Path) -> Item:
    if image.shape[:2] != mask.shape:
        raise DatasetLayoutError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image is {image.shape[1]}x{image.shape[0]}"
        )
    return name, image, mask


def folder_items(images: str | Path, masks: str | Path) -> Iterator[Item]:
    """Items of a folder of images and a folder of masks named alike. Binary masks are said once: their nuclei
    are connected components, so touching nuclei count as one and the instance metrics depend on it."""
    said = False
    for image_path, mask_path in folder_pairs(images, masks):
        mask, kind = read_mask_and_kind(mask_path)
        if kind == "binary" and not said:
            log.warning(
                "%s: binary masks (one value for every nucleus): true nuclei are taken as connected components, so "
                "touching nuclei count as one; AJI, PQ and nucleus counts depend on it (instance-labelled masks "
                "avoid it)",
                masks,
            )
            said = True
        yield _checked(image_path.stem, read_rgb(image_path), mask, mask_path)


def monuseg_items(root: str | Path) -> Iterator[Item]:
    """Items of the official MoNuSeg 2018 test release (``TCGA-*.tif`` beside ``TCGA-*.xml``), instances from the
    XML; the training release's layout works too."""
    from nucleiseg.data.monuseg import find_monuseg_release

    for source in find_monuseg_release(root):
        image, mask = source.load()
        yield source.name, image, mask


def _synthetic(folder: str | Path) -> bool:
    return "synthetic" in (load_manifest(folder)["config"].get("sources") or {})


def evaluate(
    session: InferenceSession,
    split: str = "test",
    data_folder: str | Path | None = None,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    monuseg: str | Path | None = None,
    iou_threshold: float | None = None,
    speed: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Metrics of ``session``'s model on one evaluation set: ``monuseg`` (the test release), ``images``/``masks``
    folders, or a prepared ``split`` (of ``data_folder``, else of the checkpoint's own training data).

    Returns flat metrics (``PREFIX/metric``, ``PREFIX/metric_METHOD``), ``n_images``, ``evaluated_on``, and with
    ``speed`` (``image_size``, ``batch_size``, ``warmup``, ``iterations``) the inference speed.
    ``iou_threshold=None``: ``metrics.iou_threshold`` of ``conf/``."""
    if iou_threshold is None:
        from nucleiseg.config.settings import default_value

        iou_threshold = float(default_value("metrics.iou_threshold"))
    if (images is None) != (masks is None):
        raise ConfigError("--images and --masks go together")
    if images is not None and monuseg is not None:
        raise ConfigError("evaluate one set at a time: --images/--masks or --monuseg")
    if monuseg is not None or images is not None or (data_folder is not None and not _synthetic(data_folder)):
        session.warn_if_synthetic("real images")
    if monuseg is not None:
        prefix, source = "monuseg", str(monuseg)
        results = session.evaluate(
            monuseg_items(monuseg), prefix, session.scale_for(dataset="monuseg"), iou_threshold=iou_threshold
        )
    elif images is not None:
        prefix, source = "folder", str(images)
        results = session.evaluate(
            folder_items(images, masks),
            prefix,
            session.scale_for(session.input_mpp(str(images)) if session.settings.scale is None else None),
            iou_threshold=iou_threshold,
        )
    else:
        folder, normalise = split_source(session, data_folder)
        prefix, source = split, f"{folder}:{split}"
        # a prepared split is at the model's training resolution already: scale 1
        from nucleiseg.config.settings import default_value

        match = float(default_value("metrics.type_match_um"))
        results = session.evaluate(
            iterate_split(folder, split), prefix, 1.0, normalise, iou_threshold=iou_threshold, type_match_um=match
        )
    results["evaluated_on"] = source
    results["prefix"] = prefix
    if speed:
        measured = session.measure_speed(**speed)
        results[f"{prefix}/images_per_second"] = measured["images_per_second"]
        results["speed"] = measured
    return results


def summary_json(session: InferenceSession, results: Mapping[str, Any]) -> dict[str, Any]:
    """One JSON object: counts, pixel metrics, instance metrics per separation method, and the settings used with
    where they came from (``tuned_on``: ``val`` when tuned after training, ``default`` otherwise)."""
    prefix = results["prefix"]
    methods = methods_for(session.head)
    first = methods[0]
    described = session.describe()
    return {
        "checkpoint": session.source,
        "evaluated_on": results["evaluated_on"],
        "n_images": results["n_images"],
        "n_true_nuclei": int(results[f"{prefix}/n_true_nuclei_{first}"]),
        "pixel": {k: results[f"{prefix}/{k}"] for k in PIXEL_KEYS if f"{prefix}/{k}" in results},
        "instances": {
            method: {
                **{k: results[f"{prefix}/{k}_{method}"] for k in INSTANCE_KEYS},
                "n_predicted_nuclei": int(results[f"{prefix}/n_predicted_nuclei_{method}"]),
            }
            for method in methods
        },
        "method": session.postprocess.method,
        "postprocess": {
            **session.postprocess.as_dict(),
            "threshold": session.threshold,
            "tuned_on": described["tuned_on"],
            "origins": described["origins"],
        },
        "settings": {k: described[k] for k in ("encoder", "head", "device", "precision", "batch_size", "tta")},
        **({"images_per_second": results[f"{prefix}/images_per_second"]} if "speed" in results else {}),
        **({"classes": typed_summary(session.classes, results, prefix)} if f"{prefix}/mpq_plus" in results else {}),
    }


def typed_summary(classes: list[str], results: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A typed model's scores by class (the set's mPQ+, F_d, type accuracy; each class's PQ, F_c, counts)."""
    from nucleiseg.metrics.typed import class_key

    overall = ("mpq_plus", "multi_r2", "pannuke_mpq", "pannuke_bpq", "f_d", "type_accuracy")
    per_class = ("pq", "dq", "sq", "f_c", "r2", "n_true", "n_predicted")
    return {
        **{k: results[f"{prefix}/{k}"] for k in overall},
        "by_class": {name: {k: results[f"{prefix}/{k}_{class_key(name)}"] for k in per_class} for name in classes},
    }
