"""Inference throughput: images per second at a fixed size, after warm-up, with device synchronisation.

A measurement to log, never a pass/fail check: the number depends on the device, precision and batch size,
which are returned with it.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from nucleiseg.devices import autocast, device_name, synchronise


@torch.no_grad()
def measure_inference(
    model: nn.Module,
    image_size: int = 512,
    batch_size: int = 3,
    precision: str = "32-true",
    device: str | torch.device = "cpu",
    warmup: int = 2,
    iterations: int = 5,
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
