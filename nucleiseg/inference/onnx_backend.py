"""The network on a CPU through ONNX Runtime (``predict.backend=auto`` for a model file, or ``=onnxruntime``),
in place of eager PyTorch.

ONNX Runtime fuses the U-Net's convolutions, batch norms and activations and runs them with its own CPU kernels:
on the 2-core development machine it computes the same nuclei as eager PyTorch in fp32 on a whole slide, 1.5x
faster, and faster than PyTorch's bf16 autocast too (see experiments/benchmarks.md). The model is exported once
per model file into the cache (``NUCLEISEG_CACHE``), checked against PyTorch on random input (probabilities
within 1e-4) before it is used, and on any problem the session stays on PyTorch with a warning: the outputs
never depend on the backend beyond that tolerance. A cached copy that ONNX Runtime cannot load (cut short, damaged)
is exported again, with a warning; a cache folder that cannot be written is one warning naming it, and PyTorch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucleiseg.models.heads import activate

log = logging.getLogger(__name__)
TOLERANCE = 1e-4


class OnnxModel(torch.nn.Module):
    """Callable like the PyTorch network: ``float32 Bx3xHxW`` in [0, 1] -> logits ``BxCxHxW`` (CPU tensors).

    ``threads`` is ONNX Runtime's intra-op thread count, fixed per runtime session: :meth:`use_threads` switches to
    another count (a session per count, made once), which the slide path does when several windows run through
    the network at once (each with fewer threads: on 2 cores, 3 windows of 1 thread beat 2 windows of 2)."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        self.path, self.threads = path, max(1, threads)
        self.sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _session(self, threads: int) -> Any:  # an onnxruntime.InferenceSession (imported on first use)
        import onnxruntime

        with self._lock:
            if threads not in self.sessions:
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = threads
                options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
                # windows differ in size at the slide's edges: a memory plan per input shape only adds memory
                options.enable_mem_pattern = False
                self.sessions[threads] = onnxruntime.InferenceSession(
                    str(self.path), options, providers=["CPUExecutionProvider"]
                )
            return self.sessions[threads]

    def use_threads(self, threads: int) -> int:
        """Run with ``threads`` intra-op threads from now on; returns the count it replaces."""
        previous, self.threads = self.threads, max(1, threads)
        return previous

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(image.detach().float().cpu().numpy())
        return torch.from_numpy(self._session(self.threads).run(None, {"image": array})[0])


def _export(model: torch.nn.Module, path: Path) -> None:
    """``model`` as ONNX at ``path``, written atomically (a temporary name, then a rename): a reader sees the whole
    file or none, and a SIGTERM leaves no temporary file."""
    from nucleiseg.inference.export_model import onnx_bytes
    from nucleiseg.models.fetch import cleanup_on_termination
    from nucleiseg.util.writing import write_bytes_atomic

    example = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    data = onnx_bytes(model, example, "logits")  # (torch's TracerWarning, on every first predict: not for users)
    with cleanup_on_termination():
        write_bytes_atomic(path, data)


def _loaded(path: Path, threads: int) -> OnnxModel | None:
    """The cached copy at ``path`` as an :class:`OnnxModel` when ONNX Runtime loads it; None (with a warning, the
    file removed) when it does not: cut short or damaged, it is exported again."""
    runtime = OnnxModel(path, threads)
    try:
        runtime._session(runtime.threads)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for every kind of bad file
        log.warning(
            "the cached ONNX copy of this model %s does not load (%s); exporting it again",
            path,
            str(error).splitlines()[0][:160] if str(error) else type(error).__name__,
        )
        with contextlib.suppress(OSError):  # a read-only cache: said next, and PyTorch runs
            path.unlink(missing_ok=True)
        return None
    return runtime


def onnx_model(model: torch.nn.Module, key: str, threads: int) -> torch.nn.Module:
    """``model`` as an :class:`OnnxModel` (exported once per ``key``, checked), or ``model`` itself with one
    warning when ONNX Runtime is missing, the cache cannot be written or the export does not reproduce it."""
    if importlib.util.find_spec("onnxruntime") is None:
        log.warning("onnxruntime is missing from this environment (a dependency of nucleiseg); using PyTorch")
        return model
    from nucleiseg.models.fetch import ModelError, writable_cache_folder
    from nucleiseg.models.zoo import cache_dir

    folder = cache_dir() / "onnx"
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"
    runtime = _loaded(path, threads) if path.is_file() else None
    if runtime is None:
        try:
            writable_cache_folder(folder, "ONNX Runtime's copy of the model")
        except ModelError as error:  # predicting works without it: on PyTorch
            log.warning("%s; using PyTorch", error)
            return model
    try:
        if runtime is None:
            _export(model, path)
            runtime = OnnxModel(path, threads)
        check = torch.rand(1, 3, 192, 160, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            head, n_types = str(getattr(model, "head", "binary")), int(getattr(model, "n_types", 0))
            theirs, ours = activate(head, runtime(check), n_types), activate(head, model.eval()(check), n_types)
            # probabilities compared as they are, HV offsets and ray distances (pixels) relative to their size
            difference = ((theirs - ours).abs() / (1 + ours.abs())).max().item()
    except Exception as error:  # noqa: BLE001 - exporters and runtimes fail in many ways: PyTorch then
        log.warning("ONNX Runtime could not run this model (%s); using PyTorch", str(error).splitlines()[0][:160])
        return model
    if difference > TOLERANCE:
        log.warning("ONNX Runtime differs from PyTorch by %.1e on this model; using PyTorch", difference)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return model
    return runtime
