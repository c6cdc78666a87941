"""Per-device defaults: precision and memory format, chosen from the hardware found unless set explicitly."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from nucleiseg.util.errors import ConfigError

PRECISIONS = ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")


def cuda_available(accelerator: str | torch.device) -> bool:
    """Whether ``accelerator`` (a Lightning accelerator name, or a device) runs on CUDA here."""
    if isinstance(accelerator, torch.device):
        return accelerator.type == "cuda"
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; ``gpu``/``cuda``/``cuda:K`` require one."""
    if isinstance(device, torch.device):
        return device
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name}: no CUDA device is visible here; use device=cpu or auto")
        return torch.device("cuda" if name == "gpu" else name)
    raise ConfigError(f"device={name!r}: expected auto, cpu, gpu, cuda or cuda:K")


def resolve_precision(precision: str | int, accelerator: str | torch.device) -> str:
    """``auto`` -> ``bf16-mixed`` on CUDA GPUs that support bf16, ``16-mixed`` on older GPUs, else ``32-true``."""
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r}: expected one of {PRECISIONS}")
    if precision != "auto":
        return precision
    if cuda_available(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix arithmetic in hardware, where bf16 autocast speeds CPU inference up."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


def resolve_inference_precision(precision: str, accelerator: str | torch.device) -> str:
    """Like :func:`resolve_precision`, but ``auto`` also picks bf16 on CPUs with native bf16 (inference only:
    training on CPU stays fp32 so runs are repeatable to the bit)."""
    if str(precision) == "auto" and not cuda_available(accelerator):
        return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    return resolve_precision(precision, accelerator)


def resolve_flag(value: str | bool, accelerator: str | torch.device, option: str) -> bool:
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


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of a resolved Lightning precision (``bf16-mixed``/``16-mixed``), else a no-op."""
    if precision in ("bf16-mixed", "16-mixed") and device.type in ("cuda", "cpu"):
        dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return nullcontext()


def synchronise(device: torch.device) -> None:
    """Wait for queued GPU work, so a host clock read after it measures the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
