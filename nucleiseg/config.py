"""Compose the project's Hydra config outside ``train.py`` (CLI commands, tests, notebooks)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from nucleiseg.errors import ConfigError


def config_dir() -> Path:
    """``conf/`` of the checkout this package runs from (or ``NUCLEISEG_CONF``)."""
    folder = Path(os.environ.get("NUCLEISEG_CONF", Path(__file__).resolve().parents[1] / "conf"))
    if not (folder / "config.yaml").is_file():
        raise ConfigError(
            f"{folder}: no config.yaml; install nucleiseg from a source checkout "
            "(pip install -e .) or set NUCLEISEG_CONF to its conf/ folder"
        )
    return folder


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose ``conf/config.yaml`` with command-line style ``overrides`` (``["data=synthetic", ...]``)."""
    from hydra import compose as hydra_compose

    from nucleiseg.parallel import register_resolvers

    register_resolvers()
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"invalid configuration override: {error}") from None
