"""Inference throughput: images per second at a fixed size, after warm-up, with device synchronisation.

A measurement to log, never a pass/fail check: the number depends on the device, precision and batch size,
which are returned with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from nucleiseg.util.devices import autocast, device_name, synchronise
from nucleiseg.util.errors import ConfigError


@torch.no_grad()
def measure_inference(
    model: nn.Module,
    image_size: int,
    batch_size: int,
    precision: str,
    device: str | torch.device,
    warmup: int,
    iterations: int,
    channels_last: bool = False,
) -> dict[str, float | int | str]:
    """Images per second over ``iterations`` timed forward passes of a random batch, after ``warmup`` passes."""
    device = torch.device(device)
    model = model.to(device).eval()
    images = torch.rand(batch_size, 3, image_size, image_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        for _ in range(warmup):
            model(images)
        synchronise(device)
        started = time.perf_counter()
        for _ in range(iterations):
            model(images)
        synchronise(device)
    seconds = time.perf_counter() - started
    return {
        "images_per_second": batch_size * iterations / seconds,
        "image_size": image_size,
        "batch_size": batch_size,
        "precision": precision,
        "device": device_name("gpu" if device.type == "cuda" else "cpu"),
    }


@dataclass(frozen=True)
class SpeedSettings:
    """The ``speed`` config group (``conf/speed/default.yaml`` holds the defaults): the inference speed a training
    run logs (``test/images_per_second``) and ``evaluate --speed`` measures."""

    enabled: bool
    image_size: int | None  # None: the training images' size
    batch_size: int
    warmup: int
    iterations: int

    def __post_init__(self) -> None:
        for name in ("batch_size", "iterations"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"speed.{name}={getattr(self, name)!r}: expected a whole number >= 1")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"speed.warmup={self.warmup!r}: expected a whole number >= 0")

    def measurement(self, training_size: int) -> dict[str, int] | None:
        """What :meth:`~nucleiseg.inference.session.InferenceSession.measure_speed` takes (``image_size``: this
        group's, else ``training_size``), or ``None`` when disabled."""
        if not self.enabled:
            return None
        size = int(self.image_size or training_size)
        return {"image_size": size, "batch_size": self.batch_size, "warmup": self.warmup, "iterations": self.iterations}
