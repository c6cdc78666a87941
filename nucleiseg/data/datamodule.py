"""LightningDataModule over a prepared dataset (paper protocol or synthetic), cached in memory.

The whole paper set is ~165 x 512 x 512 x 3 bytes of images plus int32 masks (~300 MB), so it is decoded
once into tensors and an epoch is never bound by disk. Batches travel as uint8 and become ``float32 Bx3xHxW``
in [0, 1] on the device (a quarter of the host-to-device bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nucleiseg.data.online_augment import OnlineAugment
from nucleiseg.data.prepare import load_manifest, prepare_dataset, prepared_path


class TensorPairs(Dataset):
    """In-memory image/mask pairs: ``image uint8 3xHxW``, ``mask int32 HxW``."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "mask": self.masks[index], "index": index}


def load_split(folder: str | Path, split: str) -> TensorPairs:
    """Load ``folder/split/{images,masks}.npy`` into memory as a :class:`TensorPairs`."""
    folder = Path(folder) / split
    images = torch.from_numpy(np.load(folder / "images.npy")).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.load(folder / "masks.npy"))
    return TensorPairs(images, masks)


def to_model_input(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``Bx3xHxW`` -> float32 in [0, 1]: the one place pixel values are scaled for the models."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image


class NucleiDataModule(L.LightningDataModule):
    """Serves train/val/test of the dataset described by a ``data`` config (conf/data/*.yaml)."""

    def __init__(self, data_cfg: Mapping, pin_memory: bool = False) -> None:
        super().__init__()
        self.data_cfg = data_cfg
        self.loader_cfg = data_cfg["loader"]
        self.pin_memory = pin_memory
        online = data_cfg.get("online_augment")
        self.online_augment = OnlineAugment(online) if online and online.get("enabled") else None
        self.folder: Path | None = None
        self.manifest: dict[str, Any] | None = None
        self.splits: dict[str, TensorPairs] = {}

    def prepare_data(self) -> None:
        # runs once per node before setup; reuses the prepared folder when the config has not changed
        prepare_dataset(self.data_cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.folder is None:
            self.folder = prepared_path(self.data_cfg)
            self.manifest = load_manifest(self.folder)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ("train", "val", "test"))
        for split in wanted:
            if split not in self.splits:
                self.splits[split] = load_split(self.folder, split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        workers = self.loader_cfg["num_workers"]
        return DataLoader(
            self.splits[split],
            batch_size=self.loader_cfg["batch_size"],
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=bool(self.loader_cfg["persistent_workers"]) and workers > 0,
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
            batch["image"], batch["mask"] = self.online_augment(batch["image"], batch["mask"])
        return batch
