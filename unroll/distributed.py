"""Data-parallel training on every visible device, on one host or many, with JAX's sharding.

One 1-D mesh, axis ``data``, over ``jax.devices()`` (every device of every process): a batch is
split along its leading axis over it, the parameters and optimiser state are replicated on
every device (or the optimiser state split over them: ``state_sharding``), and XLA adds the
all-reduce of the gradients (``jax.jit`` with shardings, see
``unroll.training.make_train_step``). With several processes (one per host, say), each process
loads only its own slice of every batch (``TrainingData(..., process_index, process_count)``)
and ``put_batch`` assembles the global batch from the slices; ``initialize`` joins the
processes first. See ``docs/distributed.md``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unroll.errors import InputError

DATA_AXIS = "data"

#: Environment variables in which the launchers that JAX detects by itself (Slurm, Open MPI)
#: give the number of processes.
LAUNCHER_PROCESS_COUNT = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _requested_processes(num_processes: int | None) -> int:
    """``num_processes``, else the launcher's process count (``LAUNCHER_PROCESS_COUNT``), else 1."""
    if num_processes is not None:
        return num_processes
    for name in LAUNCHER_PROCESS_COUNT:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join a run of several processes with ``jax.distributed.initialize``; nothing for one process.

    Call it before any other JAX work. The number of processes is ``num_processes``, else the
    launcher's (``SLURM_NTASKS`` under Slurm, ``OMPI_COMM_WORLD_SIZE`` under Open MPI), else 1.
    Values left out are found by JAX itself: the coordinator (``HOST:PORT`` of process 0) from
    ``JAX_COORDINATOR_ADDRESS``, else from the Slurm / Open MPI / Kubernetes / Cloud TPU
    environment, and so is this process's id. JAX also reads ``JAX_COORDINATOR_BIND_ADDRESS``,
    ``JAX_COORDINATOR_PORT`` (auto-detected clusters) and ``JAX_LOCAL_DEVICE_IDS``.
    """
    processes = _requested_processes(num_processes)
    if processes < 1:
        raise InputError(f"number of processes: must be >= 1, got {processes}")
    if process_id is not None and not 0 <= process_id < processes:
        raise InputError(f"process id {process_id} is not one of the {processes} processes' ids "
                         f"0 .. {processes - 1}")
    if processes == 1:
        return
    try:
        jax.distributed.initialize(coordinator, processes, process_id)
    except ValueError as e:
        raise InputError(f"cannot join a run of {processes} processes: {e}; give the coordinator "
                         "(--coordinator HOST:PORT or JAX_COORDINATOR_ADDRESS) and --process-id") from None


def mesh(devices=None) -> Mesh:
    """The 1-D mesh ``data`` over ``devices`` (default: every device of every process), each
    process's devices next to each other, so that each process holds one contiguous slice of a batch."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.array(sorted(devices, key=lambda d: (d.process_index, d.id))), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays split along their leading (batch) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Arrays copied whole to every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def state_sharding(tree, mesh: Mesh, shard: bool = True):
    """Per leaf of ``tree`` (arrays or shapes), where it lives: with ``shard``, split over the mesh
    along its first axis that the device count divides (ZeRO stage 1 for optimiser state: each
    device keeps and updates a slice); else, and for leaves with no such axis, replicated."""
    def place(leaf) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        axis = next((i for i, n in enumerate(shape) if n % mesh.size == 0), None) if shard else None
        return NamedSharding(mesh, PartitionSpec(*(DATA_AXIS if i == axis else None for i in range(len(shape)))))
    return jax.tree.map(place, tree)


def replicate(tree, mesh: Mesh):
    """A copy of ``tree`` (host or device arrays, the same on every process) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh), may_alias=False)


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """A batch of global arrays split over the mesh, from this process's slice of it: the
    ``(b / processes, ...)`` numpy arrays of ``TrainingData.batch`` (the whole batch for one process)."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}
