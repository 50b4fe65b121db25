"""Which datasets exist, and their constants: TFDS name, shapes, normalization, augmentation.

Everything here is plain data (no TensorFlow, no I/O), so importing it is free.
"""

from __future__ import annotations

import dataclasses

from signticket.data.preprocess import Preprocess


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset.

    ``crop_padding`` / ``resized_crop_scale`` and ``flip`` are the augmentation used when
    augmentation is on; ``augment_default`` says whether it is on when
    :func:`signticket.data.load` is not told. ``manual_files``: a dataset TFDS cannot download
    is prepared from any one of these (file or folder) in the manual dir, fetched by hand from
    ``download_url``.
    """

    name: str
    tfds_name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False
    resized_crop_scale: tuple[float, float] | None = None
    augment_default: bool = False
    train_split: str = "train"
    test_split: str = "test"
    #: Too large for memory: streamed (:func:`signticket.data.load_stream`), not ``load``-ed.
    streaming: bool = False
    #: Split sizes when known without reading TFDS's metadata (0: ask the builder).
    num_train: int = 0
    num_test: int = 0
    manual_files: tuple[str, ...] = ()
    download_url: str = ""

    def preprocess(self, augment: bool | None = None) -> Preprocess:
        """The on-device input transform, with augmentation on/off (``None``: the default)."""
        on = self.augment_default if augment is None else augment
        return Preprocess(
            mean=self.mean,
            std=self.std,
            crop_padding=self.crop_padding if on else 0,
            flip=self.flip if on else False,
            resized_crop_scale=self.resized_crop_scale if on else None,
        )


_MNIST_AUG = {"crop_padding": 2, "flip": True, "augment_default": False}
_CIFAR_AUG = {"crop_padding": 4, "flip": True, "augment_default": True}

_SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "fashion_mnist", "fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,), **_MNIST_AUG
        ),
        DatasetSpec("mnist", "mnist", 10, (28, 28, 1), (0.1307,), (0.3081,), **_MNIST_AUG),
        DatasetSpec(
            "cifar10",
            "cifar10",
            10,
            (32, 32, 3),
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            **_CIFAR_AUG,
        ),
        DatasetSpec(
            "cifar100",
            "cifar100",
            100,
            (32, 32, 3),
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            **_CIFAR_AUG,
        ),
        # Official AWS data/utils.py:33-53: RandomResizedCrop(64, (0.5, 1)) + flip for
        # training, ImageNet mean/std; the official val split (labelled) is the test split.
        # Labels: index of the class folder name (wnid) in sorted order, as ImageFolder.
        DatasetSpec(
            "tiny_imagenet",
            "tiny_imagenet",
            200,
            (64, 64, 3),
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
            flip=True,
            resized_crop_scale=(0.5, 1.0),
            augment_default=True,
            test_split="validation",
            num_train=100_000,
            num_test=10_000,
            manual_files=("tiny-imagenet-200.zip", "tiny-imagenet-200"),
            download_url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        ),
        # Augmentation (random-resized-crop, flip) happens in tf.data for ImageNet, so its
        # on-device Preprocess only normalizes.
        DatasetSpec(
            "imagenet2012",
            "imagenet2012",
            1000,
            (224, 224, 3),
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
            test_split="validation",
            streaming=True,
            num_train=1_281_167,
            num_test=50_000,
        ),
    )
}


def names() -> list[str]:
    """Names of the datasets :func:`signticket.data.load` holds in memory."""
    return [n for n, s in _SPECS.items() if not s.streaming]


def streaming_names() -> list[str]:
    """Names of the datasets that are streamed (:func:`signticket.data.load_stream`)."""
    return [n for n, s in _SPECS.items() if s.streaming]


def get(name: str) -> DatasetSpec:
    """The spec of ``name``; a ``ValueError`` listing the valid names if there is none."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(names())} "
            f"(streamed: {', '.join(streaming_names())})"
        ) from None


def preprocess_for(name: str, augment: bool | None = None) -> Preprocess:
    """The :class:`Preprocess` of dataset ``name`` (e.g. to build an ImageNet engine)."""
    return get(name).preprocess(augment)
