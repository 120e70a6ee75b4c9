"""Devices and processes: joining a multi-process run, the data mesh, and how batches and states are placed.

Several processes (machines) train one run together after `initialize_distributed`: the "data" mesh spans every
process's devices, each process builds only its rows of every global batch (`process_rows`), and the global batch,
hence every step, is the one a single process with as many devices computes.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from menet_jax.errors import DistributedError
from menet_jax.runtime import settings


def initialize_distributed(
    coordinator: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    *,
    environ=None,
    timeout: int = 300,
) -> bool:
    """Join a multi-process run (`jax.distributed.initialize`) when asked; call it before any other JAX use.

    Each argument left None is read from JAX_COORDINATOR_ADDRESS (HOST:PORT of process 0, which hosts the
    coordinator), JAX_NUM_PROCESSES and JAX_PROCESS_ID. Nothing is done (False) when none of the three is given or
    there is one process; with a coordinator but no process count or id, JAX's cluster detection (SLURM, Open
    MPI, ...) fills them in. On CPU the processes' collectives go over TCP with gloo (unless
    JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise). `timeout`: seconds to wait for every process to join.
    """
    from_environment = settings.distributed(environ)
    coordinator = coordinator or from_environment["coordinator"]
    num_processes = num_processes if num_processes is not None else from_environment["num_processes"]
    process_id = process_id if process_id is not None else from_environment["process_id"]
    if coordinator is None and num_processes is None and process_id is None:
        return False
    if num_processes == 1 and process_id in (None, 0):
        return False
    if coordinator is None:
        raise DistributedError(
            "a multi-process run needs the coordinator's address: --coordinator HOST:PORT "
            "(or JAX_COORDINATOR_ADDRESS), the same for every process"
        )
    if num_processes is not None and (
        num_processes < 1 or process_id is not None and not 0 <= process_id < num_processes
    ):
        raise DistributedError(
            f"the process id must be in 0..{num_processes - 1} and the number of processes "
            f"positive, got process id {process_id} of {num_processes}"
        )
    if not settings.cpu_collectives_set():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout)
    except Exception as error:  # a timeout, an unreachable coordinator, a port in use: one line
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DistributedError(
            f"could not join the run coordinated at {coordinator} as process {process_id} of "
            f"{num_processes}: {first[:300]}"
        ) from None
    return True


def is_main_process() -> bool:
    """Whether this process writes the run's files and log lines (process 0; always, with one process)."""
    return jax.process_index() == 0


def any_process(values) -> np.ndarray:
    """The element-wise maximum of each process's int `values` (a collective: every process must call it)."""
    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int32))).max(axis=0)


# ------------------------------------------------------------------------------------------------------ sharding
def data_mesh(devices=None) -> jax.sharding.Mesh:
    """A one-axis mesh over all devices (every process's, in a multi-process run): the batch is split along it,
    the state replicated."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return jax.sharding.Mesh(devices, ("data",))


def process_rows(batch_size: int, mesh) -> tuple[int, int]:
    """(start, stop): the rows of a global batch of `batch_size` that this process's devices hold, what it reads
    (all of them with one process)."""
    n = len(mesh.devices.flat)
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices")
    indices = NamedSharding(mesh, P("data")).addressable_devices_indices_map((batch_size,))
    starts = sorted(index[0].indices(batch_size)[:2] for index in indices.values())
    if any(a[1] != b[0] for a, b in zip(starts, starts[1:])):
        raise ValueError(f"this process's devices hold rows {starts} of the batch, not one contiguous block")
    return starts[0][0], starts[-1][1]


def shard_batch(batch, mesh, batch_size: Optional[int] = None):
    """The batch split along the mesh's "data" axis. With several processes `batch` is this process's rows
    (`process_rows`) of a global batch of `batch_size`, and the result is the global array."""
    if jax.process_count() > 1:
        sharding = NamedSharding(mesh, P("data"))
        return {
            key: jax.make_array_from_process_local_data(sharding, value, (batch_size, *value.shape[1:]))
            for key, value in batch.items()
        }
    n = len(mesh.devices.flat)
    first = next(iter(batch.values())).shape[0]
    if first % n:
        raise ValueError(f"batch size {first} is not divisible by the {n} devices")
    return jax.device_put(batch, NamedSharding(mesh, P("data")))


def replicate(tree, mesh):
    sharding = NamedSharding(mesh, P())
    if jax.process_count() > 1:  # from host values, the same on every process (a jax.Array on one device cannot
        return jax.tree_util.tree_map(  # be put on other processes' devices)
            lambda x: x if getattr(x, "sharding", None) == sharding else jax.device_put(np.asarray(x), sharding), tree
        )
    return jax.device_put(tree, sharding)


def local_copy(tree):
    """This process's copy of a replicated tree, on its first device (what a single-device program takes)."""
    if jax.device_count() == 1:
        return tree
    return jax.tree_util.tree_map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)
