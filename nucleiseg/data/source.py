"""The record every dataset reader returns: one annotated source image, loaded on demand."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from nucleiseg.util.errors import ImageReadError

# (annotation path, image shape) -> (instances int32 HxW, types int32 HxW)
TypedLoader = Callable[[Path, tuple[int, int]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SourceImage:
    """One annotated image of a public dataset.

    ``source_id`` is unique across datasets (``tnbc/01_1``, ``monuseg/TCGA-...``); ``patient`` groups images
    of one patient or slide (the TNBC slide number; the TCGA case for MoNuSeg), and is what splits keep apart.

    Typed datasets (nucleus classes) also carry ``classes`` (``classes[k - 1]`` is the name of class index ``k``;
    0 is background, or a nucleus of unknown class) and a typed loader behind :meth:`load_typed`. ``metadata``
    holds what a dataset knows beyond that (``fold`` of PanNuke, ``tissue``, ``split`` of a release).
    """

    dataset: str
    name: str
    patient: str
    image_path: Path
    annotation_path: Path
    _load_image: Callable[[Path], np.ndarray] = field(repr=False, compare=False)
    _load_mask: Callable[[Path, tuple[int, int]], np.ndarray] = field(repr=False, compare=False)
    microns_per_pixel: float | None = None  # the dataset's pixel size as configured (data.sources.NAME)
    classes: tuple[str, ...] = ()
    _load_typed: TypedLoader | None = field(default=None, repr=False, compare=False)
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def source_id(self) -> str:
        return f"{self.dataset}/{self.name}"

    @property
    def typed(self) -> bool:
        """Whether this image has nucleus classes (:meth:`load_typed` works)."""
        return self._load_typed is not None

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image uint8 HxWx3, instance_mask int32 HxW)``; raises if their sizes differ."""
        image = self._load_image(self.image_path)
        mask = self._load_mask(self.annotation_path, image.shape[:2])
        self._check_shape(mask, image, "mask")
        return image, mask

    def load_typed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(image uint8 HxWx3, instances int32 HxW, types int32 HxW)``: ``types`` is the class index of
        each pixel's nucleus (``1..len(classes)``; 0 outside nuclei or for a nucleus of unknown class), the same
        over a whole nucleus. Raises on an untyped source and on labels that break these rules."""
        if self._load_typed is None:
            raise ImageReadError(
                f"{self.source_id}: {self.dataset} has no nucleus classes; expected a typed dataset "
                "(pannuke, consep, lizard, conic, monusac, typed-folder)"
            )
        image = self._load_image(self.image_path)
        instances, types = self._load_typed(self.annotation_path, image.shape[:2])
        self._check_shape(instances, image, "instance map")
        self._check_shape(types, image, "class map")
        check_types(instances, types, len(self.classes), self.annotation_path)
        return image, instances, types

    def _check_shape(self, labels: np.ndarray, image: np.ndarray, what: str) -> None:
        if labels.shape != image.shape[:2]:
            raise ImageReadError(
                f"{self.annotation_path}: {what} is {labels.shape[1]}x{labels.shape[0]} but its image "
                f"{self.image_path} is {image.shape[1]}x{image.shape[0]}; expected the same size"
            )


def check_types(instances: np.ndarray, types: np.ndarray, n_classes: int, where: str | Path) -> None:
    """Refuse a class map that is not one class per nucleus: values outside ``0..n_classes``, a class outside
    every nucleus, or two classes within one nucleus (``instances``, ``types``: int HxW)."""
    if types.size and (types.min() < 0 or types.max() > n_classes):
        raise ImageReadError(
            f"{where}: class indices {types.min()}..{types.max()}; expected 0..{n_classes} ({n_classes} classes)"
        )
    stray = np.count_nonzero(types[instances == 0])
    if stray:
        raise ImageReadError(f"{where}: {stray} pixels have a class but no nucleus; expected class 0 outside nuclei")
    labels = np.unique(instances[instances > 0])
    if labels.size:
        low = ndimage.minimum(types, instances, labels)
        high = ndimage.maximum(types, instances, labels)
        mixed = labels[np.asarray(low) != np.asarray(high)]
        if mixed.size:
            raise ImageReadError(
                f"{where}: {mixed.size} nuclei (e.g. label {mixed[0]}) hold more than one class; expected one "
                "class per nucleus"
            )
