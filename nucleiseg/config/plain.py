"""Configuration values as plain Python containers: what JSON, checkpoints (``torch.load(weights_only=True)``),
hashes and library code take, whatever mix of OmegaConf nodes, mappings and sequences came in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf


def plain(value: Any) -> Any:
    """``value`` with every OmegaConf node resolved and every mapping/sequence made a dict/list, recursively."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
