"""The composed config made into typed settings objects, each built by ``hydra.utils.instantiate`` from its group's
``_target_`` (``conf/predict``, ``conf/postprocess``, ``conf/slide``, ``conf/speed``, ``conf/tune``, ``conf/cohort``).

The YAML files are the only place a default value is written: the dataclasses keep types and validation, and
:func:`defaults` gives a settings object with the defaults of ``conf/`` for code that has no composed config (the
Python API, tests). This module stays light (no torch, no Lightning): ``predict`` imports it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nucleiseg.config.plain import plain
from nucleiseg.util.errors import ConfigError

# The settings classes live in the layers that use them (inference, postprocess, predict ...), above this one:
# they are built from their ``_target_`` by name, never imported here, and the values of ``conf/`` they need besides
# their own group's are passed down to them (:func:`fallbacks`), so no class reaches up to the composed config.


def build(node: DictConfig | Mapping[str, Any], *, switches: tuple[str, ...] = (), **runtime: Any) -> Any:
    """The object of a config node with a ``_target_``, completed with the ``runtime`` values (plain Python
    containers inside, not OmegaConf nodes). ``switches``: keys of the node that are the caller's to read (an
    ``enabled`` flag), not arguments. A value of the wrong type is a one-line error naming the group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    where = _where(node)
    if switches:
        node = {k: v for k, v in plain(node).items() if k not in switches}
    try:
        # a partial of the node's own values, then called with the run-time ones: those never pass through
        # OmegaConf (a run name with ${...} in it stays as it is)
        made = instantiate(node, _partial_=True, _convert_="all")
        return made(**runtime)
    except ConfigError:
        raise
    except (InstantiationException, TypeError) as error:
        cause = error.__cause__ if isinstance(error, InstantiationException) else error
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{where}: {cause or error}") from None


def _where(node: DictConfig | Mapping[str, Any]) -> str:
    """The node's key in the config (``predict``, ``data.online_augment``) and its target, for error messages."""
    key = node._get_full_key(None) if isinstance(node, DictConfig) else ""
    return f"{key} ({node.get('_target_', '?')})" if key else str(node.get("_target_", "?"))


_COMPOSING = threading.Lock()  # Hydra's global state is not thread-safe: one composition at a time


@lru_cache(maxsize=1)
def _shipped() -> DictConfig:
    from nucleiseg.config.compose import compose

    return compose([])


def shipped_config() -> DictConfig:
    """``conf/config.yaml`` with no override, composed once per process (from any thread)."""
    with _COMPOSING:
        return _shipped()


def defaults(group: str, **changes: Any) -> Any:
    """The settings object of ``group`` with the defaults of ``conf/`` and ``changes``: ``defaults("slide",
    labels=True)``; what the Python API and tests use where no config was composed."""
    return build(shipped_config()[group], **{**fallbacks(group), **changes})


def fallbacks(group: str) -> dict[str, Any]:
    """Values from elsewhere in ``conf/`` that the object of ``group`` needs: the inference settings take the
    default threshold and post-processing, used when neither the user nor the checkpoint gives one."""
    if group != "predict":
        return {}
    return {
        "default_threshold": float(default_value("threshold")),
        "default_postprocess": default_values("postprocess"),
    }


def default_values(group: str) -> dict[str, Any]:
    """The default values of ``group`` in ``conf/`` (without ``_target_``): ``default_values("postprocess")``."""
    return given(shipped_config()[group])


def default_value(key: str) -> Any:
    """One top-level default of ``conf/config.yaml``: ``default_value("threshold")``."""
    return OmegaConf.select(shipped_config(), key)


def given(node: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The values of a config node that are set (not null), without Hydra's ``_target_``-style keys: at inference
    a null is the checkpoint's value (``conf/inference.yaml``)."""
    return {k: v for k, v in plain(node).items() if not k.startswith("_") and v is not None}


def inference_settings(cfg: DictConfig) -> Any:
    """The ``predict`` group as :class:`InferenceSettings`, with ``threshold`` and ``postprocess.*`` as composed:
    null (``conf/inference.yaml``) is the checkpoint's value, a number replaces it."""
    threshold = cfg.get("threshold")
    return build(
        cfg.predict,
        threshold=None if threshold is None else float(threshold),
        postprocess=given(cfg.postprocess),
        **fallbacks("predict"),
    )


def carried_settings(cfg: DictConfig) -> Any:
    """:func:`inference_settings` for the model a run has just trained: its threshold and post-processing are the
    ones it carries (the training config's, or the values tuned on validation), never the config's again."""
    return replace(inference_settings(cfg), threshold=None, postprocess={})


def postprocess_settings(cfg: DictConfig) -> Any:
    """The ``postprocess`` group of a training config, made concrete for the model's head (``model.head``)."""
    return build(cfg.postprocess).resolved(str(cfg.model.head))
