"""Per-device defaults: precision and memory format, chosen from the hardware found unless set explicitly."""

from __future__ import annotations

import torch

from nucleiseg.errors import ConfigError

PRECISIONS = ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")


def cuda_available(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str | int, accelerator: str) -> str:
    """``auto`` -> ``bf16-mixed`` on CUDA GPUs that support bf16, ``16-mixed`` on older GPUs, else ``32-true``."""
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r}: expected one of {PRECISIONS}")
    if precision != "auto":
        return precision
    if cuda_available(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_flag(value: str | bool, accelerator: str, option: str) -> bool:
    """``auto`` -> on for CUDA (channels_last, pinned memory pay off there), off on CPU."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return cuda_available(accelerator)
    raise ConfigError(f"{option}={value!r}: expected true, false or auto")


def device_name(accelerator: str) -> str:
    if cuda_available(accelerator):
        return torch.cuda.get_device_name(0)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
