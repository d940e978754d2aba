"""Limiting a benchmark process to N CPUs, for torch, OpenCV, BLAS and XLA alike.

XLA:CPU sizes its thread pools from the CPUs the process may run on (affinity-aware) unless
``NPROC`` is set; ``intra_op_parallelism_threads`` is not an XLA flag (inside ``XLA_FLAGS`` it is
ignored or aborts the parse), and ``--xla_cpu_multi_thread_eigen=false`` only makes each
dot/convolution single-threaded, so it is added for N = 1 only. The CPU affinity is the one limit
every library obeys. Both must be in place before torch or jax is imported.
"""

from __future__ import annotations

import os


def thread_variables(n: int, environ: dict | None = None) -> dict:
    """A copy of ``environ`` (default ``os.environ``) with the thread counts of OpenMP, MKL,
    OpenBLAS and XLA set to ``n``."""
    env = dict(os.environ if environ is None else environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NPROC"):
        env[var] = str(n)
    if n == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    return env


def pin_cpus(n: int) -> list[int]:
    """Restrict this process to ``n`` of its allowed CPUs (what ``taskset`` does); the CPUs used."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    cpus = sorted(os.sched_getaffinity(0))[:n]
    os.sched_setaffinity(0, cpus)
    return cpus
