"""In-memory datasets: :func:`load` -> :class:`Dataset` (uint8 NHWC arrays + their preprocess)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from signticket.data import registry, tfds_source
from signticket.data.preprocess import Preprocess


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Both splits of a dataset as host arrays, and the input transform to train on them.

    Images are uint8 ``[N, H, W, C]`` and labels int32 ``[N]``; normalization and augmentation
    happen on device in ``preprocess`` (see :class:`Preprocess`).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_images: np.ndarray = dataclasses.field(repr=False)
    train_labels: np.ndarray = dataclasses.field(repr=False)
    test_images: np.ndarray = dataclasses.field(repr=False)
    test_labels: np.ndarray = dataclasses.field(repr=False)
    preprocess: Preprocess

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        return len(self.test_labels)


def names() -> list[str]:
    """Names accepted by :func:`load`."""
    return registry.names()


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    augment: bool | None = None,
) -> Dataset:
    """Load dataset ``name`` into memory (see :func:`names`).

    Args:
      data_dir: TFDS data dir; default ``$SIGNTICKET_DATA_DIR``, else ``~/tensorflow_datasets``.
      train_subset, test_subset: keep only this many examples of the split (``None``: all).
        The subset is random but deterministic given ``seed``, and *stratified*: each class
        keeps its share of the split (up to rounding), so small subsets stay balanced. The
        kept examples stay in their original order.
      seed: seed of the subsets (train and test use independent streams of it).
      augment: training augmentation on/off; ``None`` is the dataset's default (random crop 4
        + flip for CIFAR, none for (Fashion-)MNIST, where ``True`` means crop 2 + flip).

    Raises:
      ValueError: unknown ``name`` (the message lists the valid ones), a subset larger than
        its split, or a streamed dataset (ImageNet: use :func:`load_stream`).
      DatasetUnavailableError: the data is not on this machine and cannot be fetched.
    """
    spec = registry.get(name)
    if spec.streaming:
        raise ValueError(
            f"{name!r} is too large to hold in memory: stream it with "
            f"signticket.data.load_stream (one pass: imagenet_stream; in-memory datasets: "
            f"{names()})"
        )
    for label, size in (("train_subset", train_subset), ("test_subset", test_subset)):
        if size is not None and size <= 0:
            raise ValueError(f"{label} must be a positive number of examples or None, got {size}")
    root = tfds_source.resolve_data_dir(data_dir)
    splits = tfds_source.load_arrays(spec, root)
    train_images, train_labels = splits[spec.train_split]
    test_images, test_labels = splits[spec.test_split]
    if train_subset is not None:
        idx = stratified_subset(
            train_labels, train_subset, seed, stream=0, what=f"{name} {spec.train_split}"
        )
        train_images, train_labels = train_images[idx], train_labels[idx]
    if test_subset is not None:
        idx = stratified_subset(
            test_labels, test_subset, seed, stream=1, what=f"{name} {spec.test_split}"
        )
        test_images, test_labels = test_images[idx], test_labels[idx]
    return Dataset(
        name=name,
        num_classes=spec.num_classes,
        image_shape=spec.image_shape,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        preprocess=spec.preprocess(augment),
    )


def stratified_subset(
    labels: np.ndarray, size: int, seed: int, *, stream: int = 0, what: str = "split"
) -> np.ndarray:
    """Sorted indices of a random ``size``-subset with each class at its share of ``labels``.

    Deterministic given ``(seed, stream)``. Each example's key is ``(rank + 0.5) / n_class``,
    where ``rank`` is its position within its class in a random permutation; taking the
    ``size`` smallest keys gives every class ``~size * n_class / n`` examples (exactly equal
    counts for balanced classes and ``size`` a multiple of the class count), ties between
    classes broken by the permutation.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if size > n:
        raise ValueError(f"subset of {size} examples requested but {what} has only {n}")
    rng = np.random.default_rng([seed, stream])
    perm = rng.permutation(n)
    classes, lab = np.unique(labels[perm], return_inverse=True)
    counts = np.bincount(lab, minlength=len(classes))
    by_class = np.argsort(lab, kind="stable")  # permutation order kept within each class
    starts = np.cumsum(counts) - counts
    rank = np.empty(n, np.int64)
    rank[by_class] = np.arange(n) - starts[lab[by_class]]
    key = (rank + 0.5) / counts[lab]
    return np.sort(perm[np.argsort(key, kind="stable")[:size]])
