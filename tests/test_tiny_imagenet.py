"""Tiny-ImageNet: the TFDS builder on a synthetic ``tiny-imagenet-200`` tree (the real layout:
``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images`` + ``val/val_annotations.txt``),
the missing-download error, and TFDS mock data through signticket's loading.

Labels must be ImageFolder's (official AWS ``data/utils.py:49-53`` over the per-wnid folders of
``data/preprocess_tiny_imagenet.py``): the wnid's index in *sorted* order, which differs from
the order of ``wnids.txt``."""

import zipfile

import numpy as np
import pytest
from _mock_tfds import mock_streaming
from PIL import Image

from signticket import data
from signticket.data import DatasetUnavailableError, tfds_source, tiny_imagenet

pytest.importorskip("tensorflow_datasets")

N_VAL = 10


def _color(label: int) -> tuple[int, int, int]:
    """A solid colour per class (survives JPEG), so an image tells which class it came from."""
    return (label, 255 - label, (7 * label) % 256)


def _write_tree(root, gray_class: int = 3):
    """A ``tiny-imagenet-200`` folder: 200 wnids listed in shuffled order, one training image
    per class, ``N_VAL`` validation images; class ``gray_class``'s images are grayscale."""
    rng = np.random.RandomState(0)
    wnids = [f"n{10000 + 37 * i:08d}" for i in range(200)]
    listed = list(rng.permutation(wnids))
    label = {w: i for i, w in enumerate(sorted(wnids))}
    tree = root / tiny_imagenet.FOLDER
    (tree / "val" / "images").mkdir(parents=True)
    (tree / "wnids.txt").write_text("\n".join(listed) + "\n")

    def save(path, wnid):
        path.parent.mkdir(parents=True, exist_ok=True)
        c = label[wnid]
        if c == gray_class:
            Image.new("L", (64, 64), 90).save(path, "JPEG")
        else:
            Image.new("RGB", (64, 64), _color(c)).save(path, "JPEG", quality=95)

    for w in wnids:
        save(tree / "train" / w / "images" / f"{w}_0.JPEG", w)
    lines = []
    for k in range(N_VAL):
        w = listed[k]  # the first listed wnids: not the first in sorted order
        save(tree / "val" / "images" / f"val_{k}.JPEG", w)
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (tree / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return tree, label, listed


def _check_examples(examples, label, gray_class=3):
    for key, ex in examples:
        image, y = ex["image"], ex["label"]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        if y == gray_class:
            assert (image == image[..., :1]).all()  # grayscale converted to RGB
        else:
            np.testing.assert_allclose(image.reshape(-1, 3).mean(0), _color(y), atol=3)
        wnid = key.split("/")[1] if key.startswith("train/") else None
        if wnid is not None:
            assert y == label[wnid]


def test_examples_from_folder_and_zip_have_imagefolder_labels(tmp_path):
    tree, label, listed = _write_tree(tmp_path)
    train = list(tiny_imagenet.examples(tree, "train"))
    val = list(tiny_imagenet.examples(tree, "validation"))
    assert len(train) == 200 and len(val) == N_VAL
    assert sorted(ex["label"] for _, ex in train) == list(range(200))
    assert [ex["label"] for _, ex in val] == [label[w] for w in listed[:N_VAL]]
    assert [ex["label"] for _, ex in val] != list(range(N_VAL))  # not wnids.txt's order
    _check_examples(train, label)
    _check_examples(val, label)
    # The official download is the zip with one top folder: same examples.
    archive = tmp_path / tiny_imagenet.ARCHIVE
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(tree.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(tmp_path).as_posix())
    zipped = list(tiny_imagenet.examples(archive, "validation"))
    assert [k for k, _ in zipped] == [k for k, _ in val]
    for (_, a), (_, b) in zip(zipped, val, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["label"] == b["label"]


def test_load_prepares_with_tfds_from_the_manual_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(tfds_source.OFFLINE_ENV, "1")
    data_dir = tmp_path / "data"
    manual = tfds_source.default_manual_dir(data_dir)
    manual.mkdir(parents=True)
    _, label, listed = _write_tree(manual)
    ds = data.load("tiny_imagenet", data_dir=data_dir)
    assert (ds.num_classes, ds.image_shape) == (200, (64, 64, 3))
    assert ds.train_images.shape == (200, 64, 64, 3)
    assert ds.test_images.shape == (N_VAL, 64, 64, 3)
    assert sorted(ds.train_labels.tolist()) == list(range(200))
    # TFDS stores examples in its own (key-hashed) order; the colours pair images and labels.
    assert sorted(ds.test_labels.tolist()) == sorted(label[w] for w in listed[:N_VAL])
    for images, labels in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
        for image, y in zip(images, labels, strict=True):
            if y != 3:
                np.testing.assert_allclose(image.reshape(-1, 3).mean(0), _color(y), atol=3)
    # Official augmentation (data/utils.py:34-39): RandomResizedCrop(64, (0.5, 1)) + flip,
    # ImageNet mean/std; none at evaluation.
    p = ds.preprocess
    assert (p.resized_crop_scale, p.flip, p.crop_padding) == ((0.5, 1.0), True, 0)
    assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)
    # Prepared once: the next load reads signticket's cache.
    assert tfds_source.cache_path(data_dir, "tiny_imagenet", "validation").is_file()


def test_missing_download_names_the_url_and_the_commands(tmp_path, monkeypatch):
    monkeypatch.setenv(tfds_source.OFFLINE_ENV, "1")
    with pytest.raises(DatasetUnavailableError) as e:
        data.load("tiny_imagenet", data_dir=tmp_path)
    text = str(e.value)
    assert tiny_imagenet.URL in text and "wget" in text
    assert str(tfds_source.default_manual_dir(tmp_path)) in text
    assert "python -m signticket.data.prepare tiny_imagenet" in text


def test_tfds_mock_data_goes_through_signticket_loading(tmp_path):
    from ml_collections import ConfigDict

    from signticket.runs import load_dataset

    with mock_streaming(24):
        ds = load_dataset(ConfigDict({"name": "tiny_imagenet", "train_subset": 0,
                                      "test_subset": 0}), str(tmp_path))
    assert ds.train_images.shape == (24, 64, 64, 3) and ds.test_images.shape == (24, 64, 64, 3)
    assert ds.num_classes == 200 and ds.train_labels.max() < 200
