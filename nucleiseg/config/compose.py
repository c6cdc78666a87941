"""Compose the project's Hydra config outside ``train.py`` (CLI commands, tests, notebooks), and check the keys
a user typed: a misspelt key gets the closest existing one, not Hydra's advice to add it with ``+`` (which would
add a key nothing reads)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nucleiseg.util.errors import ConfigError

GROUPS = (
    "data",
    "model",
    "loss",
    "optimizer",
    "callbacks",
    "postprocess",
    "predict",
    "slide",
    "cohort",
    "speed",
    "tune",
    "trainer",
    "logger",
    "paths",
    "hydra",
    "paper_config",
    "experiment",
)


def config_dir() -> Path:
    """The ``conf/`` folder: ``NUCLEISEG_CONF`` when set, else the package's own copy (``nucleiseg/conf``, a link
    to the repository's ``conf/`` in a checkout, the files themselves in an installed wheel)."""
    folder = Path(os.environ.get("NUCLEISEG_CONF", Path(__file__).resolve().parents[1] / "conf"))
    if not (folder / "config.yaml").is_file():
        raise ConfigError(
            f"{folder}: no config.yaml; reinstall nucleiseg, or set NUCLEISEG_CONF to the conf/ folder of a checkout"
        )
    return folder


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from nucleiseg.util.parallel import register_resolvers

    register_resolvers()
    # inside a Hydra app (train.py) Hydra is initialised already: set it aside for this composition, then restore it
    backup = get_gh_backup() if GlobalHydra.instance().is_initialized() else None
    if backup is not None:
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        if backup is not None:
            restore_gh_from_backup(backup)


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` (``config``: training; ``inference``: the checkpoint's threshold and
    post-processing unless given) with command-line style ``overrides`` (``["data=synthetic", ...]``)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    try:
        return _compose(overrides, config_name)
    except (HydraException, OmegaConfBaseException) as error:
        hint = misspelt_keys(overrides)
        raise ConfigError(hint or f"invalid configuration override: {error}") from None


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg:
        value = cfg._get_node(key)
        name = f"{prefix}{key}"
        keys.append(name)
        if OmegaConf.is_dict(value):
            keys += _leaf_keys(value, f"{name}.")
    return keys


def misspelt_keys(overrides: list[str]) -> str | None:
    """A one-line message for the first override whose key exists nowhere in the configuration (composed with
    the overrides' config-group choices), with the closest existing keys; None when every key exists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if "=" in o])
    except HydraException:
        return None  # a syntax error: Hydra's own message says where
    groups = [o.input_line for o in parsed if o.key_or_group.split("/")[0] in GROUPS and not o.is_sweep_override()]
    try:
        cfg = _compose([g for g in groups if not g.startswith("hydra")], "config")
    except Exception:  # noqa: BLE001 - the group choice itself is wrong: Hydra's message names it
        return None
    known = _leaf_keys(cfg)
    for override in parsed:
        key = override.key_or_group
        if override.is_add() or override.is_delete() or key.split("/")[0].split(".")[0] == "hydra" or key in GROUPS:
            continue
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            suggestion = f"; did you mean {' or '.join(close)}?" if close else "; see conf/ for the keys"
            return f"{key} is not a configuration key{suggestion}"
    return None


_MISSING = object()
