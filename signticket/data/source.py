"""Where the epoch loop gets its batches: a *source* of device batches.

Two kinds, one interface (:class:`Source`), so :func:`signticket.fit.fit` and
:func:`signticket.fit.evaluate` run any dataset through the same engine:

* :class:`DeviceSource` — an in-memory :class:`~signticket.data.Dataset` put on the devices
  once; each batch is a jitted gather (the fast path for Fashion-MNIST / CIFAR).
* :class:`~signticket.data.stream.StreamingDataset` — tf.data: host-side decode and
  augmentation, each process reading its own part of the files, prefetched to the devices
  (ImageNet, anything too large to hold in memory).

Both are deterministic per epoch: epoch ``e``'s order and augmentation are a pure function of
``(data_seed, e)``, so a run resumed at epoch ``e`` replays exactly what an uninterrupted run
would have seen.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import jax
import numpy as np
from jax.sharding import Mesh

from signticket.data.dataset import Dataset
from signticket.data.pipeline import (
    Batch,
    DeviceArrays,
    DeviceEpoch,
    device_epoch,
    eval_batches,
    steps_per_epoch,
    to_device,
    train_batches,
)
from signticket.data.preprocess import Preprocess


@runtime_checkable
class Source(Protocol):
    """What the epoch loop needs from a dataset: sizes, the on-device transform, and batches."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    preprocess: Preprocess

    @property
    def num_train(self) -> int: ...

    def train_epoch(self, epoch: int, batch_size: int, data_seed: int,
                    mesh: Mesh) -> Iterator[Batch]:
        """Epoch ``epoch``'s (1-based) shuffled training batches, sharded over ``mesh``."""
        ...

    def eval_batches(self, batch_size: int, mesh: Mesh) -> Iterator[Batch]:
        """Every test example once, in order, with a ``"weight"`` (0 on padding)."""
        ...

    def sample_images(self, n: int = 1) -> np.ndarray:
        """``n`` uint8 images of the model's input shape (to initialize a model)."""
        ...

    def train_sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A fixed random ``n``-subset of the training split, without augmentation, as host
        arrays (BN re-estimation, matching, curvature: a few thousand examples)."""
        ...

    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole test split as host arrays (eval transform), where it fits in memory."""
        ...


@runtime_checkable
class DeviceEpochs(Protocol):
    """A :class:`Source` whose epochs lie on the devices whole (:class:`DeviceSource`): the
    epoch loop then runs many steps per program call instead of one."""

    def device_epoch(self, epoch: int, batch_size: int, data_seed: int,
                     mesh: Mesh) -> DeviceEpoch: ...


def epoch_key(data_seed: int, epoch: int) -> jax.Array:
    """The key of epoch ``epoch``'s order (the in-memory path's contract since the start)."""
    return jax.random.fold_in(jax.random.PRNGKey(data_seed), epoch)


@dataclasses.dataclass(eq=False)
class DeviceSource:
    """An in-memory :class:`Dataset` as a :class:`Source`: both splits are put on the mesh's
    devices at the first request and reused by every epoch and evaluation."""

    dataset: Dataset
    _device: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.dataset.image_shape

    @property
    def preprocess(self) -> Preprocess:
        return self.dataset.preprocess

    @property
    def num_train(self) -> int:
        return self.dataset.num_train

    def _on_device(self, split: str, mesh: Mesh) -> DeviceArrays:
        key = (split, mesh)
        if key not in self._device:
            d = self.dataset
            images, labels = ((d.train_images, d.train_labels) if split == "train"
                              else (d.test_images, d.test_labels))
            self._device[key] = to_device(images, labels, mesh)
        return self._device[key]

    def train_epoch(self, epoch: int, batch_size: int, data_seed: int,
                    mesh: Mesh) -> Iterator[Batch]:
        d = self.dataset
        return train_batches(d.train_images, d.train_labels, epoch_key(data_seed, epoch),
                             batch_size, mesh, device_data=self._on_device("train", mesh))

    def device_epoch(self, epoch: int, batch_size: int, data_seed: int,
                     mesh: Mesh) -> DeviceEpoch:
        """:meth:`train_epoch`'s batches as one :class:`DeviceEpoch`, for a program that
        runs many steps per call."""
        return device_epoch(epoch_key(data_seed, epoch), batch_size,
                            self._on_device("train", mesh))

    def eval_batches(self, batch_size: int, mesh: Mesh) -> Iterator[Batch]:
        d = self.dataset
        return eval_batches(d.test_images, d.test_labels, batch_size, mesh,
                            device_data=self._on_device("test", mesh))

    def sample_images(self, n: int = 1) -> np.ndarray:
        return np.asarray(self.dataset.train_images[:n])

    def train_sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        # lmc's choice since the start: the first n of a RandomState(seed) permutation.
        d = self.dataset
        idx = np.random.RandomState(seed).permutation(d.num_train)[:n]
        return d.train_images[idx], d.train_labels[idx]

    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.dataset.test_images, self.dataset.test_labels


def as_source(dataset) -> Source:
    """``dataset`` as a :class:`Source`: an in-memory :class:`Dataset` is wrapped in a
    :class:`DeviceSource`; a source (e.g. a ``StreamingDataset``) is returned as it is."""
    if isinstance(dataset, Dataset):
        return DeviceSource(dataset)
    if isinstance(dataset, Source):
        return dataset
    raise TypeError(f"expected a Dataset or a Source, got {type(dataset).__name__}")


def sample_images(dataset, n: int = 1) -> np.ndarray:
    """``n`` uint8 input images of ``dataset`` (a :class:`Dataset` or a :class:`Source`)."""
    return as_source(dataset).sample_images(n)


def num_train(dataset) -> int:
    """Training examples of ``dataset`` (a :class:`Dataset` or a :class:`Source`)."""
    return as_source(dataset).num_train


def train_steps(dataset, batch_size: int) -> int:
    """Full batches per epoch of ``dataset`` (a :class:`Dataset` or a :class:`Source`)."""
    return steps_per_epoch(num_train(dataset), batch_size)


def prefetch_to_device(batches: Iterable[Batch], size: int = 2) -> Iterator[Batch]:
    """Keep ``size`` batches in flight ahead of the consumer.

    Device transfers are asynchronous: making batch ``i + size``'s array while step ``i`` runs
    overlaps the host->device copy with compute (and pulls the host pipeline along)."""
    it = iter(batches)
    queue = collections.deque(itertools.islice(it, size))
    while queue:
        yield queue.popleft()
        queue.extend(itertools.islice(it, 1))
