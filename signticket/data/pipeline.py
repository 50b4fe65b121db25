"""Batches for the sharded train/eval steps: ``{"image": uint8 [B,H,W,C], "label": int32 [B]}``.

Every batch is a global ``jax.Array`` split along its leading axis with
:func:`~signticket.sharding.batch_sharded`, which is what the engine's jitted steps expect.

Two ways to make them, same batches (same order, same content):

* Fast path (``device_data=to_device(images, labels, mesh)``): the whole uint8 split is put on
  every device once (replicated; Fashion-MNIST is 47 MB, CIFAR 150 MB), the epoch's permutation
  is computed on device, and each batch is one jitted gather whose output is already
  batch-sharded. No host->device copy of images per step.
* Host path (``device_data=None``): numpy gathers on the host, then a transfer per batch — for
  splits too large to keep on device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from signticket.sharding import batch_sharded, check_batch_size, replicated

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceArrays:
    """A split's uint8 images and int32 labels, replicated on every device of ``mesh``."""

    images: jax.Array
    labels: jax.Array
    mesh: Mesh

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _put_replicated(x: np.ndarray, mesh: Mesh) -> jax.Array:
    # From a callback rather than device_put: works when the mesh spans several hosts (each
    # process fills its own devices from its identical host copy).
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated(mesh), lambda idx: x[idx])


def _put_batch_sharded(x: np.ndarray, mesh: Mesh) -> jax.Array:
    # Every process holds the same global batch here; each fills only its own devices' rows.
    return jax.make_array_from_callback(x.shape, batch_sharded(mesh), lambda idx: x[idx])


def to_device(images: np.ndarray, labels: np.ndarray, mesh: Mesh) -> DeviceArrays:
    """Put a whole split on the mesh once, for the fast path of :func:`train_batches` /
    :func:`eval_batches`."""
    images, labels = np.asarray(images), np.asarray(labels)
    _check_pair(images, labels)
    return DeviceArrays(
        images=_put_replicated(images, mesh),
        labels=_put_replicated(labels.astype(np.int32, copy=False), mesh),
        mesh=mesh,
    )


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of full batches of ``batch_size`` in ``n`` examples (the remainder is dropped)."""
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if n < batch_size:
        raise ValueError(f"batch size {batch_size} is larger than the {n} training examples")
    return n // batch_size


def _check_pair(images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected images [N,H,W,C] and labels [N], got {images.shape} and {labels.shape}"
        )


def _check_device_data(device_data: DeviceArrays, images: np.ndarray, mesh: Mesh) -> None:
    if device_data.mesh != mesh:
        raise ValueError("device_data was put on another mesh than the one given")
    if tuple(device_data.images.shape) != tuple(np.shape(images)):
        raise ValueError(
            f"device_data holds images of shape {device_data.images.shape}, but "
            f"images has shape {np.shape(images)}: pass the same split"
        )


# -- jitted pieces (one compilation per mesh and shape) -------------------------------------------


@functools.lru_cache(maxsize=64)
def _epoch_order_fn(mesh: Mesh, n: int, steps: int, batch_size: int):
    """``key -> int32 [steps, batch_size]``: the epoch's shuffled example ids, replicated."""

    def order(key: jax.Array) -> jax.Array:
        perm = jax.random.permutation(key, n)
        return perm[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)

    return jax.jit(order, out_shardings=replicated(mesh))


def batch_at(images: jax.Array, labels: jax.Array, order: jax.Array, step: jax.Array,
             mesh: Mesh) -> Batch:
    """Batch ``step`` of an epoch held on the devices: the examples ``order[step]`` of
    ``images`` / ``labels``, batch-sharded. Traceable: the per-step gather below and
    :meth:`signticket.train.Engine.steps_on_device` both call it, so their batches are the same."""
    ids = jax.lax.dynamic_index_in_dim(order, step, keepdims=False)
    out = batch_sharded(mesh)
    return {"image": jax.lax.with_sharding_constraint(jnp.take(images, ids, axis=0), out),
            "label": jax.lax.with_sharding_constraint(jnp.take(labels, ids, axis=0), out)}


@functools.lru_cache(maxsize=64)
def _train_gather_fn(mesh: Mesh):
    """``(images, labels, order, step) -> batch`` (:func:`batch_at`), one program per call."""
    out = batch_sharded(mesh)
    return jax.jit(functools.partial(batch_at, mesh=mesh),
                   out_shardings={"image": out, "label": out})


@functools.lru_cache(maxsize=64)
def _eval_gather_fn(mesh: Mesh, batch_size: int):
    """``(images, labels, start) -> (images, labels, weights)`` of examples start..start+B-1;
    positions past the end repeat the last example with weight 0."""
    out = batch_sharded(mesh)

    def gather(images: jax.Array, labels: jax.Array, start: jax.Array):
        n = labels.shape[0]
        pos = start + jnp.arange(batch_size, dtype=jnp.int32)
        ids = jnp.minimum(pos, n - 1)
        weight = (pos < n).astype(jnp.float32)
        return jnp.take(images, ids, axis=0), jnp.take(labels, ids, axis=0), weight

    return jax.jit(gather, out_shardings=(out, out, out))


# -- iterators ---------------------------------------------------------------------------------


def train_batches(
    images: np.ndarray,
    labels: np.ndarray,
    key: jax.Array,
    batch_size: int,
    mesh: Mesh,
    *,
    device_data: DeviceArrays | None = None,
) -> Iterator[Batch]:
    """One epoch of shuffled training batches.

    The order is ``jax.random.permutation(key, n)`` (deterministic given ``key``); the last
    ``n % batch_size`` examples of the permutation are dropped, so each example appears at most
    once. Arguments are checked here, before the first batch is asked for.

    Raises:
      ValueError: ``batch_size`` is not a positive multiple of the mesh's device count, or
        larger than the split, or ``device_data`` does not match.
    """
    check_batch_size(batch_size, mesh)
    images_shape = np.shape(images)
    if device_data is None:
        images, labels = np.asarray(images), np.asarray(labels)
        _check_pair(images, labels)
    else:
        _check_device_data(device_data, images, mesh)
    n = images_shape[0]
    steps = steps_per_epoch(n, batch_size)
    order = _epoch_order_fn(mesh, n, steps, batch_size)(key)

    def device_iter() -> Iterator[Batch]:
        gather = _train_gather_fn(mesh)
        for step in range(steps):
            yield gather(device_data.images, device_data.labels, order, np.int32(step))

    def host_iter() -> Iterator[Batch]:
        host_order = np.asarray(order)
        for ids in host_order:
            yield {
                "image": _put_batch_sharded(images[ids], mesh),
                "label": _put_batch_sharded(labels[ids].astype(np.int32, copy=False), mesh),
            }

    return device_iter() if device_data is not None else host_iter()


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceEpoch:
    """One epoch's shuffled batches for a program that gathers its own
    (:meth:`signticket.train.Engine.steps_on_device`): batch ``i`` is
    ``batch_at(data.images, data.labels, order, i, data.mesh)``, the batches
    :func:`train_batches` yields one by one from the same key."""

    data: DeviceArrays
    #: int32 [steps, batch_size], the epoch's example ids, replicated
    order: jax.Array

    @property
    def steps(self) -> int:
        return int(self.order.shape[0])


def device_epoch(key: jax.Array, batch_size: int, device_data: DeviceArrays) -> DeviceEpoch:
    """Epoch ``key``'s order over a split on the devices (:func:`to_device`), as
    :func:`train_batches` draws it."""
    mesh = device_data.mesh
    check_batch_size(batch_size, mesh)
    n = len(device_data)
    steps = steps_per_epoch(n, batch_size)
    return DeviceEpoch(device_data, _epoch_order_fn(mesh, n, steps, batch_size)(key))


def eval_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    mesh: Mesh,
    *,
    device_data: DeviceArrays | None = None,
) -> Iterator[Batch]:
    """All examples in order, ``ceil(n / batch_size)`` batches with a ``"weight"`` float32 [B].

    The last batch is padded to ``batch_size`` (repeating the last example) with weight 0, so
    every batch has one shape (one compilation) and weighted sums count each example once.
    """
    check_batch_size(batch_size, mesh)
    if device_data is None:
        images, labels = np.asarray(images), np.asarray(labels)
        _check_pair(images, labels)
    else:
        _check_device_data(device_data, images, mesh)
    n = np.shape(images)[0]

    def device_iter() -> Iterator[Batch]:
        gather = _eval_gather_fn(mesh, batch_size)
        for start in range(0, n, batch_size):
            x, y, w = gather(device_data.images, device_data.labels, np.int32(start))
            yield {"image": x, "label": y, "weight": w}

    def host_iter() -> Iterator[Batch]:
        for start in range(0, n, batch_size):
            pos = np.arange(start, start + batch_size)
            ids = np.minimum(pos, n - 1)
            yield {
                "image": _put_batch_sharded(images[ids], mesh),
                "label": _put_batch_sharded(labels[ids].astype(np.int32, copy=False), mesh),
                "weight": _put_batch_sharded((pos < n).astype(np.float32), mesh),
            }

    return device_iter() if device_data is not None else host_iter()
