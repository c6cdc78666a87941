"""LightningDataModule over a prepared dataset (paper protocol or synthetic), cached in memory.

The whole paper set is ~165 x 512 x 512 x 3 bytes of images plus int32 masks (~300 MB), so it is decoded
once into tensors and an epoch is never bound by disk. Batches travel as uint8 and become ``float32 Bx3xHxW``
in [0, 1] on the device (a quarter of the host-to-device bytes). With ``distance_targets`` each item also
carries its normalised distance map (see :func:`distance_map`), computed once from the instance masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries
from torch.utils.data import DataLoader, Dataset

from nucleiseg.data.model_input import to_model_input
from nucleiseg.data.online_augment import OnlineAugment
from nucleiseg.data.prepare import load_manifest


def distance_map(instances: np.ndarray) -> np.ndarray:
    """``int HxW`` instance labels -> ``float32 HxW``: each nucleus's distance to its own border divided by its
    largest value, so every nucleus peaks at 1 in its centre (Naylor et al., IEEE TMI 2018); 0 on background.

    Borders between touching nuclei count as borders, so each nucleus gets its own peak."""
    inside = (instances > 0) & ~find_boundaries(instances, mode="inner")
    distance = ndimage.distance_transform_edt(inside) + (instances > 0)  # border pixels 1, centre the largest
    labels = np.unique(instances[instances > 0])
    if not labels.size:
        return np.zeros(instances.shape, np.float32)
    peaks = np.zeros(int(instances.max()) + 1)
    peaks[labels] = ndimage.maximum(distance, instances, labels)
    return np.where(instances > 0, distance / np.maximum(peaks[instances], 1e-6), 0).astype(np.float32)


class TensorPairs(Dataset):
    """In-memory pairs: ``image uint8 3xHxW``, ``mask int32 HxW`` (and ``distance float32 HxW``, ``types int32
    HxW`` each pixel's nucleus class, when given)."""

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        distances: torch.Tensor | None = None,
        types: torch.Tensor | None = None,
    ) -> None:
        self.images, self.masks, self.distances, self.types = images, masks, distances, types

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[index], "mask": self.masks[index], "index": index}
        if self.distances is not None:
            item["distance"] = self.distances[index]
        if self.types is not None:
            item["types"] = self.types[index]
        return item


def load_split(folder: str | Path, split: str, distance_targets: bool = False) -> TensorPairs:
    """Load ``folder/split/{images,masks}.npy`` into memory as a :class:`TensorPairs`."""
    folder = Path(folder) / split
    images = torch.from_numpy(np.load(folder / "images.npy")).permute(0, 3, 1, 2).contiguous()
    masks_array = np.load(folder / "masks.npy")
    distances = None
    if distance_targets:
        distances = torch.from_numpy(np.zeros(masks_array.shape, np.float32))
        for index, mask in enumerate(masks_array):
            distances[index] = torch.from_numpy(distance_map(mask))
    types = torch.from_numpy(np.load(folder / "types.npy")) if (folder / "types.npy").is_file() else None
    return TensorPairs(images, torch.from_numpy(masks_array), distances, types)


class NucleiDataModule(L.LightningDataModule):
    """Serves train/val/test of a prepared dataset folder (see :func:`nucleiseg.data.prepare.prepare_dataset`)."""

    def __init__(
        self,
        folder: str | Path,
        *,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        on_device: bool,
        online_augment: OnlineAugment | None = None,
        distance_targets: bool = False,
    ) -> None:
        """The ``data.loader`` group's ``_target_`` (its YAML holds the defaults; the assembly resolves its
        ``auto`` values for the accelerator). ``on_device``: move the cached tensors to the training device (a
        GPU) once at setup, so batches are indexed there and nothing is copied from the host per step."""
        super().__init__()
        self.on_device = on_device
        self.folder = Path(folder)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.online_augment = online_augment
        self.distance_targets = distance_targets
        self.manifest: dict[str, Any] = load_manifest(self.folder)
        self.splits: dict[str, TensorPairs] = {}

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ("train", "val", "test"))
        device = self.trainer.strategy.root_device if self.on_device and self.trainer is not None else None
        for split in wanted:
            if split not in self.splits:
                pairs = load_split(self.folder, split, self.distance_targets)
                if device is not None and device.type == "cuda":
                    tensors = (pairs.images, pairs.masks, pairs.distances, pairs.types)
                    pairs = TensorPairs(*(t.to(device) if t is not None else None for t in tensors))
                self.splits[split] = pairs

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # no validation split (val_fraction=0, the paper's literal 165 training pairs): Lightning skips validation
        return self._loader("val", shuffle=False) if len(self.splits["val"]) else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        batch["image"] = to_model_input(batch["image"])
        if self.online_augment is not None and self.trainer is not None and self.trainer.training:
            batch.update(self.online_augment(batch["image"], batch["mask"], batch.get("distance"), batch.get("types")))
        return batch
