"""Image enhancement: stain normalisation to a reference image (Macenko 2009, Reinhard 2001), with torchstain.

A normaliser is fitted once to a reference image; its fitted parameters (a few numbers) are what the prepared
dataset's manifest and the checkpoint carry, so prediction normalises exactly as training did without the
reference file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.util.errors import ConfigError, ImageReadError

METHODS = ("none", "macenko", "reinhard")


class StainNormaliser:
    """``uint8 HxWx3 -> uint8 HxWx3`` in the reference image's stain appearance."""

    def __init__(self, method: str, state: Mapping[str, Any]) -> None:
        import torchstain

        if method == "macenko":
            self._normaliser = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
            self._normaliser.HERef = np.asarray(state["HERef"], dtype=np.float64)
            self._normaliser.maxCRef = np.asarray(state["maxCRef"], dtype=np.float64)
        elif method == "reinhard":
            self._normaliser = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
            self._normaliser.target_means = np.asarray(state["target_means"], dtype=np.float64)
            self._normaliser.target_stds = np.asarray(state["target_stds"], dtype=np.float64)
        else:
            raise ConfigError(f"stain method {method!r}: expected one of {METHODS[1:]}")
        self.method, self._state = method, {k: np.asarray(v).tolist() for k, v in state.items()}

    @classmethod
    def fit(cls, method: str, reference: np.ndarray) -> StainNormaliser:
        import torchstain

        if method == "macenko":
            fitted = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
            fitted.fit(reference)
            state = {"HERef": fitted.HERef, "maxCRef": fitted.maxCRef}
        elif method == "reinhard":
            fitted = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
            fitted.fit(reference)
            state = {"target_means": fitted.target_means, "target_stds": fitted.target_stds}
        else:
            raise ConfigError(f"data.stain.method={method!r}: expected one of {METHODS}")
        return cls(method, state)

    def state(self) -> dict[str, Any]:
        """JSON- and ``weights_only``-safe description: ``{"method": ..., "params": {...}}``."""
        return {"method": self.method, "params": self._state}

    def __call__(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        try:
            if self.method == "macenko":
                normalised = self._normaliser.normalize(image, stains=False)[0]
            else:
                normalised = self._normaliser.normalize(image)
        except (np.linalg.LinAlgError, ValueError, IndexError) as error:
            raise ImageReadError(
                f"{name}: Macenko/Reinhard stain normalisation failed ({error}); the image may "
                "hold too little stained tissue"
            ) from None
        return np.clip(normalised, 0, 255).astype(np.uint8)


def from_state(state: Mapping[str, Any] | None) -> StainNormaliser | None:
    """Rebuild a normaliser from :meth:`StainNormaliser.state` (``None`` or method ``none``: no normalisation)."""
    if not state or state.get("method", "none") == "none":
        return None
    return StainNormaliser(state["method"], state["params"])


def fit_from_config(cfg: Mapping | None) -> StainNormaliser | None:
    """The ``data.stain`` config (``method``, ``reference`` image path) -> a fitted normaliser, or None."""
    if not cfg or cfg.get("method", "none") == "none":
        return None
    method = cfg["method"]
    if method not in METHODS:
        raise ConfigError(f"data.stain.method={method!r}: expected one of {METHODS}")
    if not cfg.get("reference"):
        raise ConfigError(f"data.stain.method={method} needs data.stain.reference=PATH (a typical H&E tile)")
    from nucleiseg.data.image_io import read_rgb

    reference = Path(cfg["reference"]).expanduser()
    return StainNormaliser.fit(method, read_rgb(reference))
