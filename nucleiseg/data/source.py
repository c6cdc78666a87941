"""The record every dataset reader returns: one annotated source image, loaded on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucleiseg.util.errors import ImageReadError


@dataclass(frozen=True)
class SourceImage:
    """One annotated image of a public dataset.

    ``source_id`` is unique across datasets (``tnbc/01_1``, ``monuseg/TCGA-...``); ``patient`` groups images
    of one patient or slide (the TNBC slide number; the TCGA case for MoNuSeg).
    """

    dataset: str
    name: str
    patient: str
    image_path: Path
    annotation_path: Path
    _load_image: Callable[[Path], np.ndarray] = field(repr=False, compare=False)
    _load_mask: Callable[[Path, tuple[int, int]], np.ndarray] = field(repr=False, compare=False)
    microns_per_pixel: float | None = None  # the dataset's pixel size as configured (data.sources.NAME)

    @property
    def source_id(self) -> str:
        return f"{self.dataset}/{self.name}"

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image uint8 HxWx3, instance_mask int32 HxW)``; raises if their sizes differ."""
        image = self._load_image(self.image_path)
        mask = self._load_mask(self.annotation_path, image.shape[:2])
        if mask.shape != image.shape[:2]:
            raise ImageReadError(
                f"{self.annotation_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{self.image_path} is {image.shape[1]}x{image.shape[0]}; expected the same size"
            )
        return image, mask
