"""Several runs of a sweep at once on one machine (``hydra/launcher=local_parallel``).

At batch 3 one run leaves most of a GPU idle, so the study runs several jobs per GPU: as many as fit in the free
memory at :data:`JOB_GPU_BYTES` each (at most :data:`MAX_JOBS_PER_GPU`), on every GPU, job k on GPU k mod
(number of GPUs). On a CPU-only machine, one job per :data:`CPU_THREADS_PER_JOB` cores. Each job then uses its
share of the CPU threads, so parallel jobs do not oversubscribe the cores.
"""

from __future__ import annotations

import os

# Device memory of one paper-protocol training job (512 px, batch 3, bf16) with its share of CUDA context and
# allocator slack, for the heaviest configurations of Table I: see experiments/benchmarks.md for how it was set.
JOB_GPU_BYTES = 10 * 2**30
MAX_JOBS_PER_GPU = 8
CPU_THREADS_PER_JOB = 4


def jobs_per_gpu() -> int:
    """``NUCLEISEG_JOBS_PER_GPU``, else from the least free memory among the visible GPUs."""
    given = os.environ.get("NUCLEISEG_JOBS_PER_GPU")
    if given:
        return max(1, int(given))
    import torch

    free = min(torch.cuda.mem_get_info(index)[0] for index in range(torch.cuda.device_count()))
    return max(1, min(MAX_JOBS_PER_GPU, free // JOB_GPU_BYTES))


def parallel_jobs() -> int:
    """How many sweep jobs run at once here (the ``n_jobs`` of ``hydra/launcher=local_parallel``)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count() * jobs_per_gpu()
    return max(1, (os.cpu_count() or 1) // CPU_THREADS_PER_JOB)


def register_resolvers() -> None:
    """``${nucleiseg_parallel_jobs:}`` for the launcher config; idempotent."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("nucleiseg_parallel_jobs"):
        OmegaConf.register_new_resolver("nucleiseg_parallel_jobs", parallel_jobs, use_cache=True)


def share_cpu_threads() -> int | None:
    """Inside a parallel sweep job: limit torch to this job's share of the cores; return the thread count."""
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except ValueError:
        return None
    n_jobs = launcher.get("n_jobs") if hasattr(launcher, "get") else None
    if not isinstance(n_jobs, int) or n_jobs <= 1:
        return None
    import torch

    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    torch.set_num_threads(threads)
    return threads
