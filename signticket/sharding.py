"""Device mesh and shardings for data-parallel training.

One mesh axis, ``"data"``: parameters are replicated, batches are split along their leading axis
over every device of the mesh. The same code runs on 1..N CPU, GPU or TPU devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices) with the single axis ``"data"``."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: no devices given")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy of an array on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits an array's leading (batch) axis over the mesh's data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise a clear error unless ``batch_size`` splits evenly over the mesh's devices."""
    n = mesh.shape[DATA_AXIS]
    if batch_size <= 0 or batch_size % n:
        raise ValueError(
            f"batch size {batch_size} must be a positive multiple of the number of devices ({n})"
        )
