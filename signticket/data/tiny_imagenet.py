"""Tiny-ImageNet (``tiny_imagenet``) as a TFDS builder prepared from the manual download.

TFDS has no Tiny-ImageNet, and its files cannot be fetched by TFDS: the user downloads
``tiny-imagenet-200.zip`` (http://cs231n.stanford.edu/tiny-imagenet-200.zip) into the manual
dir (``<data_dir>/downloads/manual``), as the zip or its extracted ``tiny-imagenet-200``
folder, and ``python -m signticket.data.prepare tiny_imagenet`` (or the first load) prepares it.

The splits follow the official AWS code (``data/preprocess_tiny_imagenet.py``,
``data/utils.py:33-53``): ``train`` = the 100,000 images of ``train/<wnid>/images/``,
``validation`` = the 10,000 labelled images of ``val/images/`` with their class from
``val/val_annotations.txt`` (the official code's test set; the ``test/`` folder has no labels
and is not used). Labels are each wnid's index in sorted order — ``ImageFolder``'s class
index over the per-wnid folders the official preprocessing makes. Images are decoded with PIL
and converted to RGB, as ``ImageFolder``'s loader does (a few are grayscale JPEGs), and stored
losslessly (PNG).

The builder class is defined on first use (:func:`builder_class`), since defining it imports
TensorFlow; :func:`signticket.data.tfds_source.import_tfds` does that, so
``tfds.builder("tiny_imagenet")`` works after it.
"""

from __future__ import annotations

import functools
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

NAME = "tiny_imagenet"
ARCHIVE = "tiny-imagenet-200.zip"
FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
NUM_CLASSES = 200
IMAGE_SIZE = 64


class TinyImagenetLayoutError(ValueError):
    """The manual download does not have Tiny-ImageNet's layout."""


class _Files:
    """Read-only access to the ``tiny-imagenet-200`` tree, in a folder or in the zip."""

    def __init__(self, source: Path):
        self._zip = zipfile.ZipFile(source) if source.is_file() else None
        self._root = source
        if self._zip is not None:
            names = self._zip.namelist()
            self._names = set(names)
            # The official zip holds one top folder, tiny-imagenet-200/.
            self._prefix = f"{FOLDER}/" if f"{FOLDER}/wnids.txt" in self._names else ""

    def read(self, relative: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(self._prefix + relative)
        return (self._root / relative).read_bytes()

    def exists(self, relative: str) -> bool:
        if self._zip is not None:
            return self._prefix + relative in self._names
        return (self._root / relative).is_file()

    def listdir(self, relative: str) -> list[str]:
        """File names directly in folder ``relative``, sorted."""
        if self._zip is not None:
            folder = f"{self._prefix}{relative.rstrip('/')}/"
            return sorted(n[len(folder):] for n in self._names
                          if n.startswith(folder) and "/" not in n[len(folder):]
                          and n != folder)
        return sorted(p.name for p in (self._root / relative).iterdir() if p.is_file())


def find_source(manual_dir: Path) -> Path | None:
    """The Tiny-ImageNet download in ``manual_dir``: the extracted folder, else the zip, else
    ``manual_dir`` itself when it is the extracted folder; ``None`` if there is none."""
    for candidate in (manual_dir / FOLDER, manual_dir / ARCHIVE, manual_dir):
        if candidate.is_file() and candidate.suffix == ".zip":
            return candidate
        if candidate.is_dir() and (candidate / "wnids.txt").is_file():
            return candidate
    return None


def class_index(files: _Files) -> dict[str, int]:
    """wnid -> label: sorted order, as ``torchvision.datasets.ImageFolder``."""
    wnids = sorted({w.strip() for w in files.read("wnids.txt").decode().split() if w.strip()})
    if len(wnids) != NUM_CLASSES:
        raise TinyImagenetLayoutError(f"wnids.txt lists {len(wnids)} classes, expected "
                                      f"{NUM_CLASSES}")
    return {w: i for i, w in enumerate(wnids)}


def train_files(files: _Files, index: dict[str, int]) -> Iterator[tuple[str, int]]:
    """``(path, label)`` of every training image, class by class in label order."""
    for wnid in index:
        folder = f"train/{wnid}/images"
        names = [n for n in files.listdir(folder) if n.upper().endswith(".JPEG")]
        if not names:
            raise TinyImagenetLayoutError(f"no images in {folder}/")
        for name in names:
            yield f"{folder}/{name}", index[wnid]


def validation_files(files: _Files, index: dict[str, int]) -> Iterator[tuple[str, int]]:
    """``(path, label)`` of every validation image, from ``val/val_annotations.txt``
    (tab-separated: file name, wnid, bounding box)."""
    for line in files.read("val/val_annotations.txt").decode().splitlines():
        if not line.strip():
            continue
        name, wnid = line.split("\t")[:2]
        if wnid not in index:
            raise TinyImagenetLayoutError(f"val_annotations.txt: {name} has class {wnid!r}, "
                                          f"which is not in wnids.txt")
        yield f"val/images/{name}", index[wnid]


def decode_rgb(data: bytes) -> Any:
    """uint8 ``[64, 64, 3]`` from JPEG bytes: PIL, converted to RGB (``ImageFolder``'s
    ``pil_loader``)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise TinyImagenetLayoutError(f"image of shape {array.shape}, expected "
                                      f"{(IMAGE_SIZE, IMAGE_SIZE, 3)}")
    return array


def examples(source: Path, split: str) -> Iterator[tuple[str, dict]]:
    """TFDS ``(key, example)`` pairs of ``split`` (``train`` or ``validation``) of the
    download at ``source`` (folder or zip)."""
    files = _Files(source)
    for required in ("wnids.txt", "val/val_annotations.txt"):
        if not files.exists(required):
            raise TinyImagenetLayoutError(f"{source} has no {required}: not the "
                                          f"{FOLDER} layout ({URL})")
    index = class_index(files)
    listing = train_files if split == "train" else validation_files
    for path, label in listing(files, index):
        yield path, {"image": decode_rgb(files.read(path)), "label": label}


@functools.cache
def builder_class(tfds: Any) -> type:
    """The ``tiny_imagenet`` TFDS builder class, defined (and so registered with TFDS) once."""

    class TinyImagenet(tfds.core.GeneratorBasedBuilder):
        """Tiny-ImageNet-200: 64x64 RGB, 200 classes; train 100,000, validation 10,000."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES: ClassVar[dict[str, str]] = {
            "1.0.0": "signticket's builder from the cs231n download."}
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            f"Download {URL} and place {ARCHIVE} (or the extracted {FOLDER}/ folder) in "
            f"the manual dir (default <data_dir>/downloads/manual)."
        )

        def _info(self) -> Any:
            return tfds.core.DatasetInfo(
                builder=self,
                description="Tiny-ImageNet-200 (cs231n); labels = sorted-wnid index.",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                                 encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }),
                supervised_keys=("image", "label"),
                homepage="http://cs231n.stanford.edu/",
            )

        def _split_generators(self, dl_manager: Any) -> dict:
            source = find_source(Path(dl_manager.manual_dir))
            if source is None:
                raise TinyImagenetLayoutError(
                    f"no {ARCHIVE} or {FOLDER}/ in {dl_manager.manual_dir}: "
                    + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
            return {"train": self._generate_examples(source, "train"),
                    "validation": self._generate_examples(source, "validation")}

        def _generate_examples(self, source: Path, split: str) -> Iterator[tuple[str, dict]]:
            yield from examples(source, split)

    return TinyImagenet
