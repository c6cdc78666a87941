"""The raw training step of a configuration, timed: what the dry run projects a study from
(:mod:`nucleiseg.training.study_cost`) and what ``nucleiseg benchmark`` compares the real loop against. The module is
built as ``train.py`` builds it (:func:`nucleiseg.training.assemble.module_from_config`), from random initialisation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

from nucleiseg.util.devices import autocast, synchronise

if TYPE_CHECKING:
    from nucleiseg.models.lit_module import SegmentationModule


def training_step_rate(
    module: SegmentationModule,
    batch_at: Callable[[int], dict[str, torch.Tensor]],
    device: torch.device,
    precision: str,
    steps: int,
    warmup: int,
) -> float:
    """Images/s of ``module``'s training loss + backward + optimizer step; ``batch_at(k)`` gives step k's batch
    on ``device`` (its cost is inside the timing: decoding for the naive path, nothing for the cached one)."""
    optimiser = module.configure_optimizers()
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    module.train()
    images, started = 0, time.perf_counter()
    for index in range(steps + warmup):
        if index == warmup:
            synchronise(device)
            started, images = time.perf_counter(), 0
        batch = batch_at(index)
        with autocast(device, precision):
            loss = module._shared_step(batch)[0]["loss"]  # the loss training_step computes
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        images += batch["image"].shape[0]
    synchronise(device)
    return images / (time.perf_counter() - started)


def unet_widths(cfg: DictConfig, encoder: str) -> list[int] | None:
    """``model.unet_widths`` for the plain U-Nets (a narrower U-Net on request), nothing for the smp encoders."""
    return (
        OmegaConf.to_container(cfg.model.unet_widths)
        if cfg.model.unet_widths and encoder in ("unet", "unet_bn")
        else None
    )


def random_init_config(cfg: DictConfig, encoder: str, values: dict) -> DictConfig:
    """A copy of ``cfg`` for ``encoder`` from random initialisation (its widths), with ``values`` set on top."""
    cfg = cfg.copy()
    for key, value in {
        "encoder": encoder,
        "pretrained": False,
        "model.unet_widths": unet_widths(cfg, encoder),
        **values,
    }.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def random_init_module(cfg: DictConfig, encoder: str, device: torch.device, channels_last: bool) -> SegmentationModule:
    """``encoder``'s LightningModule as train.py builds it
    (:func:`nucleiseg.training.assemble.module_from_config`), from random initialisation, with the memory format
    asked for and no compilation, on ``device``."""
    from nucleiseg.training.assemble import module_from_config

    values = {"model.channels_last": channels_last, "model.compile": False}
    return module_from_config(random_init_config(cfg, encoder, values), device.type).to(device)
