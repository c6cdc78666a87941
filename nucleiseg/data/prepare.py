"""Build the processed dataset of the paper's protocol: split, resize, augment, write, with a manifest.

Output folder ``PREPARED_ROOT/NAME-CONFIGHASH/``::

    manifest.json            sources per split, seed, config, counts, content hash
    train/images.npy         uint8  N x S x S x 3
    train/masks.npy          int32  N x S x S instance labels
    val/..., test/...

The folder is written under a temporary name and renamed at the end, so an interrupted or failed run never
leaves a half-written dataset; an existing folder is reused (same config = same folder) unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.config.plain import plain
from nucleiseg.data.archive import dataset_folder
from nucleiseg.data.monuseg import find_monuseg
from nucleiseg.data.source import SourceImage
from nucleiseg.data.split import (
    SPLIT_MODES,
    carve_validation,
    split_by_patient,
    split_folds,
    split_none,
    split_paper,
)
from nucleiseg.data.stain import StainNormaliser, fit_from_config
from nucleiseg.data.synthetic import SyntheticSpec, synthetic_sources
from nucleiseg.data.tnbc import find_tnbc
from nucleiseg.data.transforms import augment_pair, rescale_pair, resize_pair, tile_pair
from nucleiseg.data.typed_sources import TYPED_KEYS, dataset_classes, typed_sources
from nucleiseg.util.errors import ConfigError

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 2  # 2: records carry the source image size (the model's training scale)


def config_hash(config: Mapping) -> str:
    """SHA-256 of a config's canonical JSON."""
    return hashlib.sha256(json.dumps(plain(config), sort_keys=True).encode()).hexdigest()


def collect_sources(sources_cfg: Mapping, stack: ExitStack) -> dict[str, list[SourceImage]]:
    """Read every configured dataset: ``{"tnbc": [...], "monuseg": [...]}`` (zips are opened inside ``stack``),
    each source image carrying its dataset's configured pixel size."""
    collected: dict[str, list[SourceImage]] = {}
    for key, cfg in sources_cfg.items():
        if cfg is None:
            continue
        mpp = cfg.get("microns_per_pixel")
        if key == "tnbc":
            found = {"tnbc": find_tnbc(stack.enter_context(dataset_folder(cfg["root"], "tnbc")))}
        elif key == "monuseg":
            folder = stack.enter_context(dataset_folder(cfg["root"], "monuseg"))
            found = {"monuseg": find_monuseg(folder, cfg.get("mask_dir"))}
        elif key in TYPED_KEYS:
            found = typed_sources(key, cfg, stack)
        elif key == "synthetic":
            spec = SyntheticSpec(height=cfg["tile_size"], width=cfg["tile_size"], n_nuclei=cfg["n_nuclei"])
            found = {
                "tnbc": synthetic_sources("tnbc", list(cfg["tnbc_images_per_slide"]), spec, cfg["seed"]),
                "monuseg": synthetic_sources("monuseg", [1] * cfg["monuseg_images"], spec, cfg["seed"]),
            }
        else:
            raise ConfigError(
                f"data.sources.{key}: unknown dataset; expected tnbc, monuseg, synthetic or one of {list(TYPED_KEYS)}"
            )
        for dataset, sources in found.items():
            # the configured pixel size; else the one a reader found (PanNuke's, a typed folder's classes.json)
            collected[dataset] = [
                replace(source, microns_per_pixel=mpp or source.microns_per_pixel) for source in sources
            ]
    return collected


def plan_splits(sources: dict[str, list[SourceImage]], protocol: Mapping) -> dict[str, list[SourceImage]]:
    """Assign source images to train/val/test following ``protocol`` (see conf/data/paper.yaml)."""
    mode = protocol["split"]
    if mode not in SPLIT_MODES:
        raise ConfigError(f"data.protocol.split={mode!r}: expected one of {SPLIT_MODES}")
    test_dataset = protocol["test_dataset"]
    if test_dataset not in sources:
        raise ConfigError(f"data.protocol.test_dataset={test_dataset!r}: no such dataset among {sorted(sources)}")
    if mode == "folds":
        return split_folds(sources[test_dataset], protocol.get("folds"))
    splitter = {"paper": split_paper, "by_patient": split_by_patient, "none": split_none}[mode]
    pool, test = splitter(sources[test_dataset], protocol["n_test"], protocol["seed"])
    for name, dataset in sources.items():
        if name != test_dataset:
            pool = dataset + pool  # MoNuSeg first, as in the paper's training list
    train, val = carve_validation(pool, protocol["val_fraction"], protocol["seed"], by_patient=mode == "by_patient")
    return {"train": train, "val": val, "test": test}


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None  # synthetic sources have no file
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _augmentations(split: str, protocol: Mapping) -> list[str]:
    if split == "test" or (split == "val" and not protocol["augment_val"]):
        return ["identity"]
    names = list(protocol["augment"])
    return (["identity"] + names) if protocol["include_originals"] or not names else names


def model_tiles(
    source: SourceImage, image: np.ndarray, mask: np.ndarray, protocol: Mapping
) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int] | None]]:
    """A source pair at the model's scale: ``[(image, mask, tile origin)]``.

    The paper's protocol (``mpp: null``) squashes every image to ``image_size`` square, whatever its pixel size
    (TNBC stays at 0.25 um/px, MoNuSeg 1000 px becomes 0.49 um/px). With ``protocol.mpp`` every source is first
    resampled from its own pixel size to that one, so a nucleus is as many model pixels wide whichever dataset
    it comes from, then cut into ``image_size`` tiles (crops covering the image, padded when smaller)."""
    size, mpp = protocol["image_size"], protocol.get("mpp")
    if mpp is None:
        return [(*resize_pair(image, mask, size), None)]
    if not source.microns_per_pixel:
        raise ConfigError(
            f"data.protocol.mpp={mpp}: data.sources.{source.dataset}.microns_per_pixel is not set; expected the "
            "dataset's pixel size in micrometres (0.25 for 40x scans)"
        )
    image, mask = rescale_pair(image, mask, float(source.microns_per_pixel) / float(mpp))
    return tile_pair(image, mask, size)


def _write_split(
    folder: Path, split: str, sources: list[SourceImage], protocol: Mapping, normaliser: StainNormaliser | None = None
) -> list[dict]:
    augmentations = _augmentations(split, protocol)
    images, masks, records = [], [], []
    for source in sources:
        if source.typed:  # instances and classes moved together (2xHxW)
            image, instances, types = source.load_typed()
            mask = np.stack([instances, types])
        else:
            image, mask = source.load()
        source_size = [int(image.shape[0]), int(image.shape[1])]
        if normaliser is not None:
            image = normaliser(image, str(source.image_path))
        for tile_image, tile_mask, origin in model_tiles(source, image, mask, protocol):
            for augmentation in augmentations:
                pair_image, pair_mask = augment_pair(tile_image, tile_mask, augmentation)
                record = {
                    "index": len(records),
                    "source_id": source.source_id,
                    "dataset": source.dataset,
                    "patient": source.patient,
                    "augmentation": augmentation,
                    "source_size": source_size,
                    "n_nuclei": int(len(np.unique(pair_mask[0] if pair_mask.ndim == 3 else pair_mask)) - 1),
                }
                if origin is not None:  # physical-scale protocol: where the tile lies in the resampled image
                    record["tile"] = list(origin)
                images.append(pair_image)
                masks.append(pair_mask)
                records.append(record)
    size = protocol["image_size"]
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8))
    typed = any(source.typed for source in sources)
    stacked = np.stack(masks) if masks else np.zeros((0, *((2,) if typed else ()), size, size), np.int32)
    np.save(folder / "masks.npy", stacked[:, 0] if typed else stacked)
    if typed:  # each pixel's nucleus class (0 outside nuclei), beside the instance labels
        np.save(folder / "types.npy", stacked[:, 1])
    return records


def _content_hash(folder: Path, records: dict[str, list[dict]]) -> str:
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode())
    for split in SPLITS:
        for array in ("images.npy", "masks.npy", "types.npy"):
            if (folder / split / array).is_file():
                digest.update(np.load(folder / split / array, mmap_mode="r").tobytes())
    return digest.hexdigest()


# Protocol keys added after prepared folders were named, with the value that means "as before": at that value they stay
# out of the folder's name, so adding a key never orphans the datasets users already prepared (and the runs logged on
# them); any other value names another folder. (The run identity does the same with its LATER_KEYS.)
LATER_PROTOCOL_KEYS: dict[str, Any] = {"folds": None}


def prepared_path(data_cfg: Mapping) -> Path:
    """Folder the processed dataset of ``data_cfg`` lives in: ``prepared_root/name-confighash``."""
    protocol = dict(plain(data_cfg["protocol"]))
    for name, neutral in LATER_PROTOCOL_KEYS.items():
        if name in protocol and protocol[name] == neutral:
            protocol.pop(name)
    key = {
        "sources": data_cfg["sources"],
        "protocol": protocol,
        "format": FORMAT_VERSION,
        "stain": data_cfg.get("stain"),
    }
    return Path(data_cfg["prepared_root"]).expanduser() / f"{data_cfg['name']}-{config_hash(key)[:10]}"


def lock_file(target: Path) -> Path:
    """Where the lock of a prepared folder lives (one hidden folder of locks, reused, never removed: removing a
    lock file would let two processes hold "the" lock at once)."""
    return target.parent / ".locks" / f"{target.name}.lock"


def intact(folder: Path) -> bool:
    """Whether a prepared folder still holds what its manifest describes (content hash of every array)."""
    try:
        manifest = load_manifest(folder)
        return _content_hash(folder, manifest["splits"]) == manifest["content_hash"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return False


def changed_sources(folder: Path) -> list[str]:
    """Source files (images, masks, annotations) whose content differs from when ``folder`` was prepared from them
    (a mask edited on disk must not be trained on in its old form). Files no longer there are not counted: a
    prepared dataset stands on its own once made (moving the raw data does not invalidate it)."""
    try:
        records = [r for split in load_manifest(folder)["splits"].values() for r in split]
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return []
    recorded = {}
    for record in records:
        for kind in ("image", "annotation"):
            if record.get(f"{kind}_file") and record.get(f"{kind}_sha256"):
                recorded[record[f"{kind}_file"]] = record[f"{kind}_sha256"]
    return [name for name, sha in sorted(recorded.items()) if Path(name).is_file() and _file_sha256(Path(name)) != sha]


def prepare_dataset(
    data_cfg: Mapping, overwrite: bool = False, log: Callable[[str], object] = print, wait: float = 3600.0
) -> Path:
    """Build (or reuse) the processed dataset described by ``data_cfg``; return its folder.

    One process prepares a dataset at a time (a lock beside it; the others wait, then reuse it), and a folder is
    reused only when its arrays still match its manifest's content hash: a damaged one is rebuilt, with a word.
    """
    from nucleiseg.util.locking import exclusive

    target = prepared_path(data_cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(lock_file(target), f"prepared dataset {target}", wait=wait):
        for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed run: nobody else writes now
            shutil.rmtree(stale, ignore_errors=True)
        if (target / MANIFEST).is_file() and not overwrite:
            changed = changed_sources(target)
            if intact(target) and not changed:
                log(f"reusing prepared dataset {target}")
                return target
            why = f"{changed[0]} changed since it was prepared" if changed else "damaged or edited"
            log(f"prepared dataset {target} does not match its manifest ({why}): rebuilding it")
            overwrite = True
        return _build(data_cfg, target, overwrite, log)


def _check_pixel_sizes(sources_cfg: Mapping, protocol: Mapping) -> None:
    """With ``protocol.mpp``, every configured source needs its own pixel size: named before anything is read."""
    if protocol.get("mpp") is None:
        return

    for key, cfg in sources_cfg.items():
        # a typed folder carries its own pixel size (classes.json): checked per image, as it is read
        if cfg is not None and key not in TYPED_KEYS and not cfg.get("microns_per_pixel"):
            raise ConfigError(
                f"data.protocol.mpp={protocol['mpp']}: data.sources.{key}.microns_per_pixel is not set; expected the "
                "dataset's pixel size in micrometres (0.25 for 40x scans), or data.protocol.mpp=null"
            )


def _build(data_cfg: Mapping, target: Path, overwrite: bool, log: Callable[[str], object]) -> Path:
    protocol = plain(data_cfg["protocol"])
    _check_pixel_sizes(data_cfg["sources"], protocol)
    scratch = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        normaliser = fit_from_config(data_cfg.get("stain"))
        with ExitStack() as stack:
            sources = collect_sources(data_cfg["sources"], stack)
            classes = dataset_classes(sources)
            splits = plan_splits(sources, protocol)
            records = {}
            for split in SPLITS:
                log(f"preparing {split}: {len(splits[split])} source images")
                records[split] = _write_split(scratch / split, split, splits[split], protocol, normaliser)
                for source, record_group in zip(splits[split], _group(records[split]), strict=True):
                    for record in record_group:
                        record["image_file"] = str(source.image_path)
                        record["annotation_file"] = str(source.annotation_path)
                        record["image_sha256"] = _file_sha256(source.image_path)
                        record["annotation_sha256"] = _file_sha256(source.annotation_path)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": data_cfg["name"],
            "seed": protocol["seed"],
            "config": {
                "sources": plain(data_cfg["sources"]),
                "protocol": protocol,
                "stain": plain(data_cfg.get("stain")),
            },
            "stain": normaliser.state() if normaliser is not None else None,
            "counts": {s: len(records[s]) for s in SPLITS},
            "classes": classes,  # nucleus classes (types.npy index k is classes[k - 1]); empty: untyped
            "source_images": {s: sorted({r["source_id"] for r in records[s]}) for s in SPLITS},
            "splits": records,
        }
        manifest["content_hash"] = _content_hash(scratch, records)
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if target.exists():  # only reached with overwrite=True
            shutil.rmtree(target)
        os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    log(f"prepared {target}: " + ", ".join(f"{s} {len(records[s])}" for s in SPLITS))
    return target


def _group(records: list[dict]) -> list[list[dict]]:
    """Group consecutive records of one source image (its augmented copies)."""
    groups: list[list[dict]] = []
    for record in records:
        if groups and groups[-1][0]["source_id"] == record["source_id"]:
            groups[-1].append(record)
        else:
            groups.append([record])
    return groups


def load_manifest(folder: str | Path) -> dict:
    """Read ``manifest.json`` of a prepared dataset folder."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run `nucleiseg data prepare` to build the dataset first")
    return json.loads(path.read_text())


def training_resolution(manifest: Mapping[str, Any], sources_cfg: Mapping) -> dict[str, Any]:
    """How each dataset was resampled for training, from a manifest: ``dataset_scale`` (model pixels per source
    pixel), ``dataset_mpp`` (micrometres per model pixel, where the source's pixel size is configured) and
    ``model_mpp``: the protocol's ``mpp`` when it sets one (every dataset at that scale), else the resolution of
    the test dataset (the target domain; else the first dataset known)."""
    protocol = manifest["config"]["protocol"]
    size, target = protocol["image_size"], protocol.get("mpp")
    widths: dict[str, list[int]] = {}
    for records in manifest["splits"].values():
        for record in records:
            if "source_size" in record:
                widths.setdefault(record["dataset"], []).append(record["source_size"][1])
    native = {dataset: _source_mpp(sources_cfg, dataset) for dataset in sorted(widths)}
    if target is not None:
        scale = {dataset: float(mpp) / float(target) for dataset, mpp in native.items() if mpp}
        mpp = {dataset: float(target) for dataset in scale}
        return {"dataset_scale": scale, "dataset_mpp": mpp, "model_mpp": float(target)}
    scale = {dataset: float(size / np.median(values)) for dataset, values in sorted(widths.items())}
    mpp = {dataset: float(native[dataset]) / factor for dataset, factor in scale.items() if native.get(dataset)}
    test_dataset = protocol.get("test_dataset")
    model_mpp = mpp.get(test_dataset, next(iter(mpp.values()), None))
    return {"dataset_scale": scale, "dataset_mpp": mpp, "model_mpp": model_mpp}


def _source_mpp(sources_cfg: Mapping, dataset: str) -> float | None:
    """The configured pixel size of ``dataset`` (the synthetic source stands for both datasets)."""
    cfg = sources_cfg.get(dataset) or sources_cfg.get("synthetic") or {}
    return cfg.get("microns_per_pixel")
