"""Datasets for signticket: TFDS-backed, offline-capable, fed to sharded jitted steps.

* :func:`load` -> :class:`Dataset`: small datasets (``fashion_mnist``, ``mnist``, ``cifar10``,
  ``cifar100``) held in memory as uint8 arrays, cached as npz after the first TFDS read.
* :func:`train_batches` / :func:`eval_batches`: batches sharded over a mesh; with
  :func:`to_device` the whole split stays on device and each batch is a jitted gather.
* :class:`Preprocess`: on-device normalization and augmentation inside the step.
* :func:`load_stream` -> :class:`StreamingDataset`: ImageNet (or anything too large for memory)
  through tf.data, a :class:`Source` of batches like the in-memory :class:`DeviceSource`.
* :func:`as_source`: what :func:`signticket.fit.fit` iterates, for either kind.
* ``python -m signticket.data.prepare NAME``: prepare a dataset ahead of time.

Importing this package does not import TensorFlow; only preparing or first reading a TFDS
dataset does.
"""

from signticket.data.dataset import Dataset, load, names, stratified_subset
from signticket.data.errors import DatasetUnavailableError
from signticket.data.imagenet import imagenet_stream
from signticket.data.pipeline import (
    DeviceArrays,
    DeviceEpoch,
    eval_batches,
    steps_per_epoch,
    to_device,
    train_batches,
)
from signticket.data.preprocess import Preprocess
from signticket.data.registry import DatasetSpec, preprocess_for, streaming_names
from signticket.data.source import (
    DeviceEpochs,
    DeviceSource,
    Source,
    as_source,
    epoch_key,
    num_train,
    prefetch_to_device,
    sample_images,
    train_steps,
)
from signticket.data.stream import StreamingDataset, epoch_seed, load_stream
from signticket.data.tfds_source import resolve_data_dir

__all__ = [
    "Dataset",
    "DatasetSpec",
    "DatasetUnavailableError",
    "DeviceArrays",
    "DeviceEpoch",
    "DeviceEpochs",
    "DeviceSource",
    "Preprocess",
    "Source",
    "StreamingDataset",
    "as_source",
    "epoch_key",
    "epoch_seed",
    "eval_batches",
    "imagenet_stream",
    "load",
    "load_stream",
    "names",
    "num_train",
    "prefetch_to_device",
    "preprocess_for",
    "resolve_data_dir",
    "sample_images",
    "steps_per_epoch",
    "stratified_subset",
    "streaming_names",
    "to_device",
    "train_batches",
    "train_steps",
]
