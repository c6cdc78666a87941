"""Identity of a training run: its name, its folder and the hash of what it computes.

The name is derived from the configuration, so re-launching the same command finds the same folder
(``outputs/<study>/<run name>/``): that is what lets a sweep resume unfinished runs and skip finished ones.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nucleiseg.data.prepare import config_hash
from nucleiseg.util.errors import ConfigError
from nucleiseg.util.moved_modules import new_target

# Keys that do not change what a run computes: excluded from its identity (name and config hash).
VOLATILE_KEYS = (
    "resume",
    "skip_finished",
    "paths",
    "progress_bar",
    "logger",
    "hydra",
    "dry_run",
    "dry_run_steps",
    "gpu_per_job",
    "keep_training_checkpoints",
)
# Where things live is not what they are: moving the data (NUCLEISEG_DATA) or the weights must not make a
# finished run "another configuration". The data's content is checked through the manifest hash instead.
LOCATION_KEYS = ("root", "mask_dir", "prepared_root", "weights_dir", "reference")


# Overrides that name the run already, or change where/how it runs but not what it computes, stay out of the
# run name; every other override is part of it (so a sweep over optimizer.lr gets one folder per value).
NAME_EXCLUDED_KEYS = {
    "encoder",
    "pretrained",
    "seed",
    "paper_config",
    "experiment",
    "study",
    "resume",
    "skip_finished",
    "progress_bar",
    "test_checkpoint",
    "dry_run",
    "dry_run_steps",
    "gpu_per_job",
    "trainer.accelerator",
    "trainer.devices",
    "data.loader.num_workers",
    "data.loader.pin_memory",
    "data.loader.persistent_workers",
}
NAME_EXCLUDED_PREFIXES = ("paths.", "logger.", "hydra.", "hydra/")
MAX_NAME_SUFFIX = 48


def _naming_override_list() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # composed outside a Hydra app (tests, notebooks): no command line
        return []
    return sorted(
        o
        for o in overrides
        if (key := o.split("=", 1)[0].lstrip("+~")) not in NAME_EXCLUDED_KEYS
        and not key.startswith(NAME_EXCLUDED_PREFIXES)
    )


def _naming_overrides() -> str:
    return ",".join(_naming_override_list())


# What makes runs seeds of one configuration in a study: everything they compute with, except the seeds and the
# TNBC split (the report separates split and seed spread) and settings of where or how fast they ran.
NOT_CONFIGURATION = (
    "seed",
    "study",
    "deterministic",
    "checkpoint_every_n_epochs",
    "test_checkpoint",
    "speed",
    "predict",
    "slide",
    "data.protocol.seed",
    "data.protocol.split",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.precision",
    "trainer.deterministic",
    "data.loader.num_workers",
    "data.loader.pin_memory",
    "data.loader.persistent_workers",
    "data.loader.on_device",
    "model.channels_last",
    "model.compile",
    "model.register_as",
)
SPLIT_OVERRIDES = ("data.protocol.seed", "data.protocol.split")


# How the configuration is wired into objects is not what a run computes: the ``_target_`` of a group our own
# code builds, the default checkpoint callbacks, and predict.channels_last (which follows model.channels_last)
# are left out of a run's identity while they are the shipped ones. So a release that moves a default into a
# group (as the config groups did) does not make every earlier run "another configuration"; a wiring the user
# changed (their own module, an extra callback) is part of the identity.
WIRING_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_")

# Groups that never change what a training run computes (how slides and cohorts are predicted afterwards): in a run's
# identity their values are always the ones shipped when identities were pinned (the config of 2026-12-01), so a new
# default there (slide.min_tissue, slide.workers) neither makes earlier runs "other runs" nor splits a study.
# A record of history, not a setting: the settings themselves live in conf/slide and conf/cohort.
TRAINING_NEUTRAL = {
    "slide": {
        "window": 1024,
        "margin": 96,
        "thumbnail": 2048,
        "min_tissue": 0.02,
        "labels": False,
        "min_pixels": 16777216,
        "workers": 3,
        "roi_mode": "intersect",
    },
    "cohort": {
        "launcher": "local",
        "shards": "auto",
        "slurm": {
            "partition": None,
            "gpus_per_node": 1,
            "cpus_per_task": 8,
            "mem_gb": 32,
            "timeout_min": 240,
            "array_parallelism": 16,
        },
    },
}


# Keys added after run identities were pinned, for what earlier runs could not do (the HV and StarDist heads): at their
# shipped value they leave a run's identity as it was, so adding a key never makes earlier runs "other runs"; a run
# that sets one to another value is another run. The values themselves live in conf/ only.
LATER_KEYS = (
    "model.n_rays",
    "loss.hv_mse_weight",
    "loss.hv_msge_weight",
    "loss.star_prob_weight",
    "loss.star_dist_weight",
    "loss.star_background_reg",
    "postprocess.hover_min_object",
    "postprocess.hover_sobel_kernel",
    "postprocess.hover_edge_threshold",
    "postprocess.hover_smoothing_kernel",
    "postprocess.hover_marker_opening",
    "postprocess.hover_min_marker",
    "postprocess.star_prob_threshold",
    "postprocess.star_nms_threshold",
    "postprocess.star_border",
    "tune.grid.hover",
    "tune.grid.stardist",
    "model.types",
    "loss.type_weight",
    "data.protocol.folds",
    "metrics.type_match_um",
)


def _drop_later_keys(plain: dict[str, Any], shipped: DictConfig) -> None:
    """Remove, in place, the :data:`LATER_KEYS` whose value is the shipped one."""
    for dotted in LATER_KEYS:
        *parents, leaf = dotted.split(".")
        node = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            shipped_value = OmegaConf.select(shipped, dotted)
            if OmegaConf.is_config(shipped_value):
                shipped_value = OmegaConf.to_container(shipped_value, resolve=True)
            if node[leaf] == shipped_value:
                node.pop(leaf)


def _plain_identity(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` resolved to plain containers, without the shipped wiring (see :data:`WIRING_KEYS`)."""
    from nucleiseg.config.settings import shipped_config

    shipped = shipped_config()
    plain = OmegaConf.to_container(cfg, resolve=True)
    _drop_our_targets(plain, OmegaConf.to_container(shipped, resolve=False))
    _drop_later_keys(plain, shipped)
    if "callbacks" in cfg and OmegaConf.to_container(cfg.callbacks) == OmegaConf.to_container(shipped.callbacks):
        plain.pop("callbacks", None)
    predict, model = plain.get("predict"), plain.get("model")
    if (
        isinstance(predict, dict)
        and isinstance(model, dict)
        and predict.get("channels_last") == model.get("channels_last")
    ):
        predict.pop("channels_last", None)
    for group, pinned in TRAINING_NEUTRAL.items():
        if group in plain:
            plain[group] = copy.deepcopy(pinned)
    return plain


def _drop_our_targets(node: dict[str, Any], shipped: Any) -> None:
    """Remove, in place, the wiring keys of the nodes whose ``_target_`` is ours and the shipped one."""
    if not isinstance(shipped, dict):
        return
    target = node.get("_target_")
    if isinstance(target, str) and target.startswith("nucleiseg."):
        target = node["_target_"] = new_target(target)  # a module's name before the 2026-12 layout: the same class
    if isinstance(target, str) and target.startswith("nucleiseg.") and target == shipped.get("_target_"):
        for key in WIRING_KEYS:
            if key in node and node[key] == shipped.get(key):
                node.pop(key)
    for key, value in node.items():
        if isinstance(value, dict):
            _drop_our_targets(value, shipped.get(key))


def configuration_hash(cfg: DictConfig) -> str:
    """Hash of what a configuration computes, the same for all its seeds and TNBC splits (the report groups runs
    by it: seeds of one configuration are never pooled with runs that changed, say, ``optimizer.lr``)."""
    plain = _plain_identity(cfg)
    plain = {k: v for k, v in plain.items() if k not in VOLATILE_KEYS}
    for dotted in NOT_CONFIGURATION:
        *parents, leaf = dotted.split(".")
        node = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config_hash(_without_locations(plain))


def variant_label(cfg: DictConfig | None = None) -> str:
    """The overrides that make a run's configuration differ from its study's (``optimizer.lr=0.001``), without
    the seeds and splits: how the report names a variant beside the configuration's own name."""
    return ",".join(o for o in _naming_override_list() if o.split("=", 1)[0].lstrip("+~") not in SPLIT_OVERRIDES)


def run_name(cfg: DictConfig) -> str:
    """``densenet121-imagenet-seed3``, plus other overrides (``-optimizer.lr=0.001``; hashed when long)."""
    name = f"{cfg.encoder}-{'imagenet' if cfg.pretrained else 'scratch'}-seed{cfg.seed}"
    extra = _naming_overrides()
    if len(extra) > MAX_NAME_SUFFIX:
        extra = "cfg" + config_hash({"overrides": extra})[:8]
    return f"{name}-{extra.replace('/', '_')}" if extra else name


def _without_locations(value: Any) -> Any:
    """``value`` without the :data:`LOCATION_KEYS` of its dicts, nested ones included (lists are kept as they are)."""
    if isinstance(value, dict):
        return {k: _without_locations(v) for k, v in value.items() if k not in LOCATION_KEYS}
    return value


def identity_hash(cfg: DictConfig) -> str:
    """Hash of everything that changes what a run computes (so a run folder is never reused for another);
    locations of data and weights are left out (see :data:`LOCATION_KEYS`)."""
    plain = _plain_identity(cfg)
    return config_hash(_without_locations({k: v for k, v in plain.items() if k not in VOLATILE_KEYS}))


def run_folder(cfg: DictConfig) -> Path:
    """``outputs/<study>/<run name>/``: checkpoints, ``run.json``, ``done.json`` (or ``failed.json``)."""
    return Path(cfg.paths.output_root).expanduser().resolve() / cfg.study / run_name(cfg)


class RunRefused(ConfigError):
    """The run folder holds a run this command must not touch (another configuration, or one in progress)."""


@dataclass
class RunFolder:
    """A run's name, folder and identity, and what an earlier session left there."""

    name: str
    path: Path
    identity: str
    previous: dict | None  # run.json of an earlier session

    @property
    def done(self) -> Path:
        return self.path / "done.json"

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunRefused(f"{path}: not readable as JSON ({error}); move it away to start this run afresh") from None


def inspect_folder(cfg: DictConfig) -> RunFolder:
    """Name, folder and identity of ``cfg``'s run; refuses (touching nothing) a folder of another configuration."""
    folder = RunFolder(run_name(cfg), run_folder(cfg), identity_hash(cfg), None)
    folder.previous = read_json(folder.run_file)
    if folder.previous is not None and folder.previous.get("identity") != folder.identity:
        found = str(folder.previous.get("identity"))[:10]
        raise RunRefused(
            f"{folder.path} holds a run of another configuration (identity {found}, now {folder.identity[:10]}); "
            "use another study=NAME or remove that folder"
        )
    return folder
