"""ImageNet (``imagenet2012``) streamed from TFDS with tf.data, batches sharded over the mesh.

ImageNet does not fit in memory, so unlike the small datasets it is decoded and augmented on
the host by tf.data (random-resized-crop + flip for training; resize + center crop for eval)
and arrives as uint8 ``[B, S, S, 3]``; the on-device :class:`Preprocess` of ``imagenet2012``
(``preprocess_for("imagenet2012")``) only normalizes. Each process reads its own part of the
split and contributes its rows of the global batch
(``jax.make_array_from_process_local_data``), so the same code runs on one host or many.

TFDS cannot download ImageNet: the archives come from image-net.org by hand, see
:data:`MANUAL_FILES`, then ``python -m signticket.data.prepare imagenet2012 --data-dir D``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from signticket.data import registry, tfds_source
from signticket.data.errors import DatasetUnavailableError
from signticket.sharding import batch_sharded, check_batch_size

NAME = "imagenet2012"
MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
#: Eval resize: shorter side to ``image_size * 256 / 224``, then a center crop of ``image_size``.
EVAL_RESIZE_RATIO = 256 / 224


default_manual_dir = tfds_source.default_manual_dir


def unavailable_error(data_dir: Path, manual_dir: Path | None = None) -> DatasetUnavailableError:
    """The error for an ImageNet that is not prepared in ``data_dir``."""
    manual = manual_dir or default_manual_dir(data_dir)
    return DatasetUnavailableError(
        f"dataset {NAME!r} is not available: TFDS looked in data_dir={data_dir} (for "
        f"{data_dir / NAME}) and found no prepared copy. ImageNet cannot be downloaded "
        f"automatically: get {' and '.join(MANUAL_FILES)} from https://image-net.org (needs an "
        f"account), put them in {manual}, and run once "
        f"`python -m signticket.data.prepare {NAME} --data-dir {data_dir}` (hours), or copy a "
        f"prepared {data_dir / NAME} from another machine."
    )


def ensure_prepared(data_dir: Path, manual_dir: Path | None = None) -> Any:
    """A TFDS builder with ImageNet prepared in ``data_dir``; prepares it from the manual
    archives when they are present. Fails fast (no TensorFlow import) when neither is there."""
    manual = manual_dir or default_manual_dir(data_dir)
    has_manual = all((manual / f).is_file() for f in MANUAL_FILES)
    if not tfds_source.looks_prepared(data_dir, NAME) and not has_manual:
        raise unavailable_error(data_dir, manual_dir)
    spec = registry.get(NAME)
    try:
        return tfds_source.ensure_prepared(
            spec, data_dir, manual_dir=manual if has_manual else None
        )
    except DatasetUnavailableError as e:
        raise unavailable_error(data_dir, manual_dir) from e


def _train_map(image_size: int, seed: int):
    import tensorflow as tf

    def fn(index: Any, example: dict) -> dict:
        # Stateless ops seeded by (seed, position in the stream): the same seed gives the same
        # crops and flips, whatever the parallelism of the map.
        ex_seed = tf.stack([tf.cast(seed, tf.int64), index])
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(ex_seed, num=2))
        data = example["image"]
        shape = tf.io.extract_jpeg_shape(data)
        whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=whole,
            seed=crop_seed,
            min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        # Decode only the crop: much cheaper than decoding the whole JPEG.
        image = tf.io.decode_and_crop_jpeg(data, window, channels=3)
        image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return {"image": _to_uint8(image), "label": tf.cast(example["label"], tf.int32)}

    return fn


def _eval_map(image_size: int):
    import tensorflow as tf

    resize = round(image_size * EVAL_RESIZE_RATIO)

    def fn(example: dict) -> dict:
        image = tf.io.decode_jpeg(example["image"], channels=3)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = resize / tf.reduce_min(shape)
        new = tf.cast(tf.round(shape * scale), tf.int32)
        image = tf.image.resize(image, new, method="bilinear", antialias=True)
        top = (new[0] - image_size) // 2
        left = (new[1] - image_size) // 2
        image = image[top : top + image_size, left : left + image_size]
        return {"image": _to_uint8(image), "label": tf.cast(example["label"], tf.int32)}

    return fn


def _to_uint8(image: Any) -> Any:
    import tensorflow as tf

    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def imagenet_stream(
    split: str,
    batch_size: int,
    mesh: Mesh,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    key: jax.Array | None = None,
    image_size: int = 224,
    train: bool | None = None,
    shuffle_buffer: int = 16_384,
) -> Iterator[dict[str, jax.Array]]:
    """One pass over ImageNet ``split`` as global batches sharded over ``mesh``.

    Args:
      split: a TFDS split (``"train"``, ``"validation"``, or a slice like ``"train[:1%]"``).
      batch_size: global batch size (a multiple of the device count and of the process count).
      data_dir: TFDS data dir (default ``$SIGNTICKET_DATA_DIR``, else ``~/tensorflow_datasets``).
      seed / key: shuffling and augmentation randomness (``key``, if given, decides the seed).
      image_size: output side length.
      train: augment, shuffle and drop the last partial batch; default: ``split`` starts with
        ``"train"``. Otherwise: in order, resize + center crop, and every example exactly once,
        the last batch padded with ``"weight"`` 0 (every batch has a ``"weight"``).

    Yields ``{"image": uint8 [B, S, S, 3], "label": int32 [B]}`` (+ ``"weight"`` in eval).

    Raises:
      DatasetUnavailableError: ImageNet is not prepared in ``data_dir`` (checked before
        returning, without importing TensorFlow).
    """
    check_batch_size(batch_size, mesh)
    n_proc, proc = jax.process_count(), jax.process_index()
    if batch_size % n_proc:
        raise ValueError(f"batch size {batch_size} must be a multiple of the {n_proc} processes")
    local_batch = batch_size // n_proc
    root = tfds_source.resolve_data_dir(data_dir)
    builder = ensure_prepared(root)
    train = split.startswith("train") if train is None else train
    if key is not None:
        seed = int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))

    tfds = tfds_source.import_tfds()
    import tensorflow as tf

    # Equal-sized parts per process in training (so every process runs the same number of
    # steps); in eval no example may be dropped, so parts may differ by one and short
    # processes pad with weight-0 batches up to the common count.
    proc_split = tfds.split_for_jax_process(
        split, process_index=proc, process_count=n_proc, drop_remainder=train
    )
    ds = builder.as_dataset(
        split=proc_split,
        shuffle_files=train,
        decoders={"image": tfds.decode.SkipDecoding()},  # decode (and crop) in our map
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )
    autotune = tf.data.AUTOTUNE
    if train:
        ds = ds.shuffle(shuffle_buffer, seed=seed).enumerate()
        ds = ds.map(_train_map(image_size, seed), num_parallel_calls=autotune)
        ds = ds.batch(local_batch, drop_remainder=True)
        n_steps = None
    else:
        ds = ds.map(_eval_map(image_size), num_parallel_calls=autotune)
        ds = ds.batch(local_batch, drop_remainder=False)
        total = builder.info.splits[split].num_examples
        n_steps = math.ceil(math.ceil(total / n_proc) / local_batch)
    ds = ds.prefetch(autotune)
    sharding = batch_sharded(mesh)

    def to_global(local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

    def train_iter() -> Iterator[dict[str, jax.Array]]:
        for local in tfds.as_numpy(ds):
            yield to_global(local)

    def eval_iter() -> Iterator[dict[str, jax.Array]]:
        shape = (local_batch, image_size, image_size, 3)
        it = iter(tfds.as_numpy(ds))
        for _ in range(n_steps):
            local = next(it, None)
            if local is None:  # this process ran out before the others: all-padding batch
                local = {
                    "image": np.zeros((0, *shape[1:]), np.uint8),
                    "label": np.zeros(0, np.int32),
                }
            k = len(local["label"])
            pad = local_batch - k
            yield to_global(
                {
                    "image": np.concatenate(
                        [local["image"], np.zeros((pad, *shape[1:]), np.uint8)]
                    ),
                    "label": np.concatenate([local["label"], np.zeros(pad, np.int32)]),
                    "weight": np.concatenate([np.ones(k, np.float32), np.zeros(pad, np.float32)]),
                }
            )

    return train_iter() if train else eval_iter()
