"""Datasets too large for memory, streamed with tf.data: :func:`load_stream` ->
:class:`StreamingDataset`, a :class:`~signticket.data.source.Source` for the epoch loop.

Host side (tf.data, TensorFlow's threads): read this process's part of the split's files,
shuffle (files and a buffer of examples), decode and augment — for ImageNet the official
recipe, RandomResizedCrop 224 + horizontal flip for training, resize 256 + center crop 224 for
evaluation (:mod:`signticket.data.imagenet`) — and batch. Each process contributes its rows of
the global batch (``jax.make_array_from_process_local_data``), a few batches ahead of the step
(:func:`~signticket.data.source.prefetch_to_device`). On device, the dataset's
:class:`Preprocess` only normalizes (ImageNet mean/std) inside the jitted step.

Determinism and resume: epoch ``e``'s pipeline is built afresh from the seed
``epoch_seed(data_seed, e)`` — file order, shuffle buffer and every crop/flip (stateless ops
keyed by the example's position in the epoch) — and tf.data keeps the order of parallel maps.
So epoch ``e`` is the same stream whether or not epochs ``1..e-1`` ran in this process: a run
killed and resumed at epoch ``e`` sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from signticket.data import registry, tfds_source
from signticket.data.pipeline import Batch
from signticket.data.preprocess import Preprocess
from signticket.data.source import prefetch_to_device
from signticket.sharding import batch_sharded, check_batch_size

#: Splits above this many examples are never materialized on the host by the array
#: attributes (``train_images`` ...) kept for array-based consumers (``lmc`` today).
MAX_IN_MEMORY = 60_000


def epoch_seed(data_seed: int, epoch: int) -> int:
    """The tf.data seed of epoch ``epoch``: a pure function of ``(data_seed, epoch)``."""
    return int(np.random.SeedSequence([data_seed, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


def open_builder(spec: registry.DatasetSpec, data_dir: Path) -> Any:
    """A TFDS builder with ``spec`` prepared in ``data_dir`` (fails fast when it is not).

    The one place the streaming path touches TFDS's preparation (tests swap it for TFDS's
    mock builder)."""
    if spec.name == "imagenet2012":
        from signticket.data import imagenet

        return imagenet.ensure_prepared(data_dir)
    return tfds_source.ensure_prepared(spec, data_dir)


@dataclasses.dataclass(eq=False)
class StreamingDataset:
    """A streamed dataset (a :class:`~signticket.data.source.Source`).

    ``train_split`` / ``test_split`` are TFDS split strings (``"train"``, ``"train[:512]"``);
    ``num_train`` / ``num_test`` their sizes. ``shuffle_buffer`` examples are shuffled at a time
    (after a shuffle of the file order).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    preprocess: Preprocess
    builder: Any = dataclasses.field(repr=False)
    train_split: str
    test_split: str
    num_train: int
    num_test: int
    shuffle_buffer: int = 16_384
    _arrays: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def image_size(self) -> int:
        return self.image_shape[0]

    # -- tf.data pipelines ---------------------------------------------------------------------

    def _read(self, split: str, *, train: bool, seed: int, process_count: int,
              process_index: int, drop_remainder: bool):
        tfds = tfds_source.import_tfds()
        proc_split = tfds.split_for_jax_process(
            split, process_index=process_index, process_count=process_count,
            drop_remainder=drop_remainder)
        ds = self.builder.as_dataset(
            split=proc_split,
            shuffle_files=train,
            decoders={"image": tfds.decode.SkipDecoding()},  # decode (and crop) in our map
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
        return ds

    def _train_dataset(self, seed: int, local_batch: int, process_count: int,
                       process_index: int):
        import tensorflow as tf

        from signticket.data.imagenet import _train_map

        local_n = self.num_train // process_count
        ds = self._read(self.train_split, train=True, seed=seed, process_count=process_count,
                        process_index=process_index, drop_remainder=True)
        # take(): equal parts on every process, hence equal step counts (and it bounds readers
        # that do not slice, such as TFDS's mock builder).
        ds = ds.take(local_n).shuffle(min(self.shuffle_buffer, local_n), seed=seed,
                                      reshuffle_each_iteration=False)
        ds = ds.enumerate().map(_train_map(self.image_size, seed),
                                num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def _eval_dataset(self, split: str, limit: int, local_batch: int, process_count: int,
                      process_index: int):
        import tensorflow as tf

        from signticket.data.imagenet import _eval_map

        ds = self._read(split, train=False, seed=0, process_count=process_count,
                        process_index=process_index, drop_remainder=False)
        ds = ds.take(limit).map(_eval_map(self.image_size), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(local_batch, drop_remainder=False).prefetch(tf.data.AUTOTUNE)

    # -- Source ----------------------------------------------------------------------------------

    def train_epoch(self, epoch: int, batch_size: int, data_seed: int,
                    mesh: Mesh) -> Iterator[Batch]:
        """Epoch ``epoch``'s batches: ``(num_train // processes) // (batch_size // processes)``
        of them, each ``{"image": uint8 [B, S, S, 3], "label": int32 [B]}`` over ``mesh``."""
        local_batch = _local_batch(batch_size, mesh)
        n_proc, proc = jax.process_count(), jax.process_index()
        ds = self._train_dataset(epoch_seed(data_seed, epoch), local_batch, n_proc, proc)
        sharding = batch_sharded(mesh)
        tfds = tfds_source.import_tfds()

        def batches() -> Iterator[Batch]:
            for local in tfds.as_numpy(ds):
                yield {k: jax.make_array_from_process_local_data(sharding, v)
                       for k, v in local.items()}

        return prefetch_to_device(batches())

    def eval_batches(self, batch_size: int, mesh: Mesh) -> Iterator[Batch]:
        """Every test example once, in order; the last batch (and, on processes whose part is
        shorter, whole batches) padded with ``"weight"`` 0, so every process runs the same
        number of steps with one shape."""
        local_batch = _local_batch(batch_size, mesh)
        n_proc, proc = jax.process_count(), jax.process_index()
        per_proc = math.ceil(self.num_test / n_proc)
        ds = self._eval_dataset(self.test_split, per_proc, local_batch, n_proc, proc)
        n_steps = math.ceil(per_proc / local_batch)
        sharding = batch_sharded(mesh)
        shape = (self.image_size, self.image_size, self.image_shape[2])
        tfds = tfds_source.import_tfds()

        def batches() -> Iterator[Batch]:
            it = iter(tfds.as_numpy(ds))
            for _ in range(n_steps):
                local = next(it, None)
                if local is None:  # this process ran out before the others
                    local = {"image": np.zeros((0, *shape), np.uint8),
                             "label": np.zeros(0, np.int32)}
                k = len(local["label"])
                pad = local_batch - k
                padded = {
                    "image": np.concatenate([local["image"], np.zeros((pad, *shape), np.uint8)]),
                    "label": np.concatenate([local["label"], np.zeros(pad, np.int32)]),
                    "weight": np.concatenate([np.ones(k, np.float32), np.zeros(pad, np.float32)]),
                }
                yield {k: jax.make_array_from_process_local_data(sharding, v)
                       for k, v in padded.items()}

        return prefetch_to_device(batches())

    def sample_images(self, n: int = 1) -> np.ndarray:
        # Only the shape matters (model init); no reason to read the data for it.
        return np.zeros((n, *self.image_shape), np.uint8)

    def train_sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` training examples from a ``seed``-shuffled stream (file order and a buffer),
        eval-transformed (resize + center crop: no augmentation); the same on every process."""
        import tensorflow as tf

        from signticket.data.imagenet import _eval_map

        if not 0 < n <= min(self.num_train, MAX_IN_MEMORY):
            raise ValueError(f"train_sample: n must lie in 1..{min(self.num_train, MAX_IN_MEMORY)}"
                             f", got {n}")
        tfds = tfds_source.import_tfds()
        ds = self._read(self.train_split, train=True, seed=seed, process_count=1,
                        process_index=0, drop_remainder=False)
        ds = ds.take(self.num_train).shuffle(min(self.shuffle_buffer, self.num_train),
                                             seed=seed, reshuffle_each_iteration=False)
        ds = ds.take(n).map(_eval_map(self.image_size), num_parallel_calls=tf.data.AUTOTUNE)
        parts = list(tfds.as_numpy(ds.batch(256)))
        return (np.concatenate([p["image"] for p in parts]),
                np.concatenate([p["label"] for p in parts]).astype(np.int32))

    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.host_arrays("test")

    # -- host arrays, for consumers that still take arrays (lmc's BN re-estimation) ------------

    def host_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole ``"train"`` or ``"test"`` (sub)split, eval-transformed (no augmentation),
        as host arrays — only for splits up to :data:`MAX_IN_MEMORY` examples."""
        size, tfds_split = ((self.num_train, self.train_split) if split == "train"
                            else (self.num_test, self.test_split))
        if size > MAX_IN_MEMORY:
            raise ValueError(
                f"{self.name} {tfds_split} ({size} examples) is too large to hold in memory as "
                f"arrays; the consumer must iterate batches (train_epoch / eval_batches) instead")
        if split not in self._arrays:
            tfds = tfds_source.import_tfds()
            ds = self._eval_dataset(tfds_split, size, 256, 1, 0)
            parts = list(tfds.as_numpy(ds))
            images = np.concatenate([p["image"] for p in parts])
            labels = np.concatenate([p["label"] for p in parts]).astype(np.int32)
            self._arrays[split] = (images, labels)
        return self._arrays[split]

    @property
    def train_images(self) -> np.ndarray:
        return self.host_arrays("train")[0]

    @property
    def train_labels(self) -> np.ndarray:
        return self.host_arrays("train")[1]

    @property
    def test_images(self) -> np.ndarray:
        return self.host_arrays("test")[0]

    @property
    def test_labels(self) -> np.ndarray:
        return self.host_arrays("test")[1]


def _local_batch(batch_size: int, mesh: Mesh) -> int:
    check_batch_size(batch_size, mesh)
    n_proc = jax.process_count()
    if batch_size % n_proc:
        raise ValueError(f"batch size {batch_size} must be a multiple of the {n_proc} processes")
    return batch_size // n_proc


def _split(split: str, subset: int | None, full: int) -> tuple[str, int]:
    if not subset:
        return split, full
    if subset > full:
        raise ValueError(f"subset of {subset} examples requested but {split} has only {full}")
    # The first examples of the split (TFDS's order): unlike the in-memory subsets not
    # stratified, which would take a pass over the labels of the whole split.
    return f"{split}[:{subset}]", subset


def load_stream(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    image_size: int | None = None,
    shuffle_buffer: int = 16_384,
) -> StreamingDataset:
    """Open streamed dataset ``name`` (``registry.streaming_names()``).

    Args:
      data_dir: TFDS data dir; default ``$SIGNTICKET_DATA_DIR``, else ``~/tensorflow_datasets``.
      train_subset, test_subset: only the first this many examples of the split.
      image_size: output side (default: the dataset's, 224 for ImageNet); evaluation resizes
        to ``image_size * 256 / 224`` and center-crops.

    Raises:
      DatasetUnavailableError: not prepared in ``data_dir`` (checked before returning).
    """
    spec = registry.get(name)
    if not spec.streaming:
        raise ValueError(f"{name!r} is held in memory: use signticket.data.load")
    builder = open_builder(spec, tfds_source.resolve_data_dir(data_dir))
    full_train, full_test = spec.num_train, spec.num_test
    if not (full_train and full_test):
        info = builder.info.splits
        full_train = info[spec.train_split].num_examples
        full_test = info[spec.test_split].num_examples
    train_split, n_train = _split(spec.train_split, train_subset, full_train)
    test_split, n_test = _split(spec.test_split, test_subset, full_test)
    size = image_size or spec.image_shape[0]
    return StreamingDataset(
        name=name,
        num_classes=spec.num_classes,
        image_shape=(size, size, spec.image_shape[2]),
        preprocess=spec.preprocess(),
        builder=builder,
        train_split=train_split,
        test_split=test_split,
        num_train=n_train,
        num_test=n_test,
        shuffle_buffer=shuffle_buffer,
    )
