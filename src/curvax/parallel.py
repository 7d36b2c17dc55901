"""Data parallelism over devices and hosts with `jax.sharding`: one mesh axis, "data".

    mesh = data_mesh("all")                  # every device of every process (None: one device)
    batch = shard_batch(batch, mesh)         # leading (batch) axis split over the devices
    state = replicate(state, mesh)           # parameters and optimiser state on every device
    update(state, static, batch, key)        # the same jitted step: XLA reduces the gradients

A jitted training step on a batch sharded this way is the single-device step on the same global
batch (the loss is a mean over the batch; XLA inserts the all-reduce), so results agree to float
round-off on any device count, and a checkpoint (host numpy arrays) resumes on any device count.
`map_over_devices` splits the probe vectors of AD force constants (FC2, FC3) over the devices.

Multi-host: `initialize_distributed()` calls `jax.distributed.initialize()`, which reads the
coordinator, process count and id from SLURM (srun) or the JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID environment; every process then loads the same data and builds
the same global batches (they are pure functions of the step), `shard_batch` hands each device its
slice, and only process 0 writes files (`is_writer`).
"""
from __future__ import annotations

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def initialize_distributed() -> None:
    """Join a multi-process run (`jax.distributed.initialize`, cluster auto-detection)."""
    jax.distributed.initialize()
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local of "
          f"{jax.device_count()} devices", flush=True)


def is_writer() -> bool:
    """True on the process that writes checkpoints, metrics and reports (process 0)."""
    return jax.process_index() == 0


def check_devices(devices, where: str = "devices") -> None:
    """ValueError naming `where` (the config file) unless `devices` is "all" or a positive
    integer. Needs no device: a config is checked without starting JAX's backend."""
    if devices != "all" and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
        raise ValueError(f"{where}: devices must be 'all' or a positive integer, got {devices!r}")


def device_count(devices="all", where: str = "devices") -> int:
    """How many devices `devices` ("all" or a positive integer) selects; ValueError naming
    `where` (the config file) if it is not one or asks for more than there are."""
    check_devices(devices, where)
    n = jax.device_count()
    if devices == "all":
        return n
    if devices > n:
        raise ValueError(f"{where}: devices: {devices} requested, {n} available ({jax.devices()[0].platform})")
    return devices


def data_mesh(devices="all") -> Mesh | None:
    """A 1-D mesh ("data") over the selected devices; None for a single device (plain jit)."""
    n = device_count(devices)
    return None if n == 1 else Mesh(np.asarray(jax.devices()[:n]), (AXIS,))


def _put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_batch(tree, mesh: Mesh | None, where: str = "batch"):
    """Every array leaf of `tree` split along its leading (batch) axis over the mesh's devices."""
    if mesh is None:
        return tree
    n = mesh.devices.size
    leaves = jax.tree.leaves(tree)
    sizes = {np.shape(x)[0] for x in leaves if np.ndim(x)}
    if len(sizes) != 1 or next(iter(sizes)) % n:
        raise ValueError(f"{where}: a global batch of {sorted(sizes)} structures cannot be split over {n} devices "
                         f"(use a batch size divisible by the device count, or `devices: 1`)")
    sharded = NamedSharding(mesh, P(AXIS))
    return jax.tree.map(lambda x: _put(x, sharded) if np.ndim(x) else x, tree)


def replicate(tree, mesh: Mesh | None):
    """Every array leaf of `tree` on every device of the mesh (parameters, optimiser state)."""
    if mesh is None:
        return tree
    full = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: x if getattr(x, "sharding", None) == full else _put(x, full), tree)


def map_over_devices(fn, xs, mesh: Mesh | None, block: int | None = None, progress=None):
    """`fn(xs)` for a function mapping a stack xs (K, ...) to a pytree of (K, ...) arrays (HVP
    columns, third-order products), the K items split over the mesh's devices (`jax.shard_map`;
    K padded with zero items to a multiple of the device count, the padding dropped after).
    block: items per device per call (the calls share one compiled program); progress: a
    tqdm-like bar (`total`, `update(n)`) advanced after each call."""
    if mesh is None:
        return fn(xs)
    xs = np.asarray(xs)
    k, n = xs.shape[0], mesh.devices.size
    width = n * (block or -(-k // n))
    # check_vma=False: the linearisation point is the same on every device, only the items vary
    mapped = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS), check_vma=False))
    if progress is not None:
        progress.total = k
        progress.refresh()
    parts = []
    for c in range(0, k, width):
        part = xs[c:c + width]
        m = part.shape[0]
        if m < width:
            part = np.concatenate([part, np.zeros((width - m,) + xs.shape[1:], xs.dtype)])
        parts.append(jax.tree.map(lambda y: np.asarray(y)[:m], mapped(shard_batch(part, mesh, "probe vectors"))))
        if progress is not None:
            progress.update(m)
    return jax.tree.map(lambda *ys: np.concatenate(ys), *parts)
