"""Tests of signticket.data: preprocess, batching over a mesh, loading, offline errors.

Unit tests use synthetic arrays. ``@pytest.mark.integration`` tests read the real Fashion-MNIST
(prepared by TFDS from the Debian package the first time, then from the npz cache).
"""

import math
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signticket import data
from signticket.data import (
    DatasetUnavailableError,
    Preprocess,
    eval_batches,
    imagenet_stream,
    steps_per_epoch,
    tfds_source,
    to_device,
    train_batches,
)
from signticket.data import prepare as prepare_cli
from signticket.sharding import batch_sharded, make_mesh

ROOT = Path(__file__).resolve().parents[1]


def _images(n=16, h=8, w=8, c=3, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, h, w, c)).astype(np.uint8)


def _normalize(images, mean, std):
    x = images.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@pytest.fixture
def offline(monkeypatch):
    """Never download in tests, even on a machine with internet."""
    monkeypatch.setenv(tfds_source.OFFLINE_ENV, "1")


# -- Preprocess -----------------------------------------------------------------------------------


def test_preprocess_normalization_exact():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    images = _images()
    out = Preprocess(mean, std)(jnp.asarray(images), None, False)
    assert out.dtype == jnp.float32 and out.shape == images.shape
    np.testing.assert_allclose(np.asarray(out), _normalize(images, mean, std), rtol=1e-6, atol=1e-6)
    # One mean/std value broadcasts over a single channel.
    gray = _images(c=1)
    out = Preprocess((0.2860,), (0.3530,))(gray, None, False)
    np.testing.assert_allclose(
        np.asarray(out), _normalize(gray, 0.2860, 0.3530), rtol=1e-6, atol=1e-6
    )


def test_preprocess_eval_is_deterministic_without_augmentation():
    p = Preprocess((0.5,) * 3, (0.25,) * 3, crop_padding=4, flip=True)
    images = _images()
    plain = _normalize(images, 0.5, 0.25)
    for rng, train in (
        (jax.random.PRNGKey(0), False),
        (jax.random.PRNGKey(1), False),
        (None, True),
        (None, False),
    ):
        np.testing.assert_allclose(np.asarray(p(images, rng, train)), plain, rtol=1e-6, atol=1e-6)


def test_augmentation_deterministic_per_rng_and_varies_across_rngs():
    p = Preprocess((0.5,) * 3, (0.25,) * 3, crop_padding=4, flip=True)
    assert hash(p) == hash(Preprocess((0.5,) * 3, (0.25,) * 3, crop_padding=4, flip=True))
    # Jitted as the engine uses it, inside a function closing over the (hashable) Preprocess.
    augment = jax.jit(lambda x, rng: p(x, rng, True))
    images = jnp.asarray(_images(n=32))
    a = augment(images, jax.random.PRNGKey(0))
    b = augment(images, jax.random.PRNGKey(0))
    c = augment(images, jax.random.PRNGKey(1))
    assert a.shape == images.shape and a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_flip_only_gives_image_or_its_mirror_and_both_occur():
    p = Preprocess((0.5,) * 3, (0.25,) * 3, crop_padding=0, flip=True)
    images = _images(n=64)
    out = np.asarray(p(images, jax.random.PRNGKey(3), True))
    same = _normalize(images, 0.5, 0.25)
    mirror = _normalize(images[:, :, ::-1], 0.5, 0.25)
    is_same = np.all(np.isclose(out, same, atol=1e-5), axis=(1, 2, 3))
    is_mirror = np.all(np.isclose(out, mirror, atol=1e-5), axis=(1, 2, 3))
    assert np.all(is_same | is_mirror)
    assert is_same.any() and is_mirror.any()  # per-example flips, not one for the batch


def test_crop_only_gives_a_window_of_the_zero_padded_image():
    pad = 2
    p = Preprocess((0.0,), (1.0,), crop_padding=pad)
    images = _images(n=8, h=6, w=5, c=1)
    out = np.asarray(p(images, jax.random.PRNGKey(0), True))
    raw = np.rint(out * 255).astype(np.uint8)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = set()
    for i in range(len(images)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(raw[i], padded[i, dy : dy + 6, dx : dx + 5])
        ]
        assert hits, f"example {i} is not a crop of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 1  # per-example offsets


def _torchvision_get_params(height, width, scale, ratio, rng):
    """torchvision ``RandomResizedCrop.get_params`` (transforms.py) in plain Python: the
    reference distribution (torchvision itself is not installed with the project)."""
    area, log_ratio = height * width, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return 0, 0, height, width  # square image: the fallback is the whole image


def test_resized_crop_boxes_follow_torchvision_get_params():
    """RandomResizedCrop(64, scale=(0.5, 1)) boxes (official AWS Tiny-ImageNet, data/utils.py:
    35): inside the image, and distributed as torchvision's rejection sampler (which skews the
    area below the uniform mean 0.75: large boxes with extreme aspects do not fit)."""
    from signticket.data.preprocess import resized_crop_boxes

    n = 4096
    boxes = np.asarray(resized_crop_boxes(jax.random.PRNGKey(0), n, 64, 64, (0.5, 1.0)))
    rng = random.Random(0)
    ref = np.array([_torchvision_get_params(64, 64, (0.5, 1.0), (3 / 4, 4 / 3), rng)
                    for _ in range(n)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 64).all() and (left + w <= 64).all()
    area, ref_area = h * w / 64**2, ref[:, 2] * ref[:, 3] / 64**2
    assert area.min() > 0.5 - 0.02 and area.max() <= 1.0
    assert 3 / 4 - 0.03 < (w / h).min() and (w / h).max() < 4 / 3 + 0.03
    assert area.mean() == pytest.approx(ref_area.mean(), abs=0.01)  # ~0.70
    np.testing.assert_allclose(np.percentile(area, [10, 50, 90]),
                               np.percentile(ref_area, [10, 50, 90]), atol=0.02)
    for ours, theirs in ((h, ref[:, 2]), (w, ref[:, 3]), (top, ref[:, 0]), (left, ref[:, 1])):
        assert ours.mean() == pytest.approx(theirs.mean(), abs=0.6)
    assert (top == 64 - h).any() and (top == 0).any()  # offsets reach both ends of the slack


def test_resized_crop_resamples_the_box_as_pil_crop_then_bilinear_resize():
    """torchvision's resized_crop on a PIL image = img.crop(box).resize(size, BILINEAR): our
    on-device resize of the same box agrees to PIL's uint8 rounding (two passes)."""
    from PIL import Image

    from signticket.data.preprocess import _interpolation_matrix

    images = _images(n=3, h=64, w=64, c=3, seed=5)
    boxes = np.array([[0, 0, 64, 64], [5, 11, 40, 52], [30, 2, 34, 61]])  # top, left, h, w
    rows = _interpolation_matrix(jnp.asarray(boxes[:, 0]), jnp.asarray(boxes[:, 2]), 64, 64)
    cols = _interpolation_matrix(jnp.asarray(boxes[:, 1]), jnp.asarray(boxes[:, 3]), 64, 64)
    ours = np.asarray(jnp.einsum("byh,bhwc,bxw->byxc", rows, jnp.asarray(images, jnp.float32),
                                 cols, precision=jax.lax.Precision.HIGHEST))
    for k, (t, left, h, w) in enumerate(boxes):
        pil = Image.fromarray(images[k]).crop((left, t, left + w, t + h))
        ref = np.asarray(pil.resize((64, 64), Image.BILINEAR), np.float32)
        assert np.abs(ours[k] - ref).max() <= 1.5, k
    np.testing.assert_allclose(ours[0], images[0], atol=1e-3)  # the whole image: identity


def test_resized_crop_augmentation_is_seeded_and_normalized():
    p = Preprocess((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), flip=True,
                   resized_crop_scale=(0.5, 1.0))
    assert p.augments and hash(p) == hash(Preprocess(
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), flip=True, resized_crop_scale=(0.5, 1)))
    images = jnp.asarray(_images(n=8, h=64, w=64, c=3))
    augment = jax.jit(lambda x, rng: p(x, rng, True))
    a, b = augment(images, jax.random.PRNGKey(0)), augment(images, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.shape == images.shape and a.dtype == jnp.float32
    plain = _normalize(np.asarray(images), p.mean, p.std)
    assert not np.allclose(np.asarray(a), plain, atol=1e-3)
    # Evaluation never crops.
    np.testing.assert_allclose(np.asarray(p(images, jax.random.PRNGKey(0), False)), plain,
                               rtol=1e-5, atol=1e-5)
    # Pixel values stay in the image's range (a convex combination of pixels).
    lo = (0 - np.asarray(p.mean)) / np.asarray(p.std)
    hi = (1 - np.asarray(p.mean)) / np.asarray(p.std)
    assert (np.asarray(a) >= lo - 1e-5).all() and (np.asarray(a) <= hi + 1e-5).all()


def test_preprocess_rejects_bad_config():
    with pytest.raises(ValueError):
        Preprocess((0.5, 0.5), (0.2,))
    with pytest.raises(ValueError):
        Preprocess((0.5,), (0.0,))
    with pytest.raises(ValueError):
        Preprocess((0.5,), (0.2,), crop_padding=-1)
    with pytest.raises(ValueError, match="resized_crop_scale"):
        Preprocess((0.5,), (0.2,), resized_crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="two crops"):
        Preprocess((0.5,), (0.2,), crop_padding=4, resized_crop_scale=(0.5, 1.0))


# -- batches --------------------------------------------------------------------------------------


def _split(n=50, seed=0):
    images = _images(n=n, h=4, w=4, c=1, seed=seed)
    images[:, 0, 0, 0] = np.arange(n) % 256  # identifies the example
    labels = np.arange(n, dtype=np.int32)  # label == example id
    return images, labels


@pytest.mark.parametrize("on_device", [True, False])
def test_train_batches_one_epoch(on_device):
    mesh = make_mesh()
    images, labels = _split(50)
    dev = to_device(images, labels, mesh) if on_device else None

    def epoch(key):
        return list(train_batches(images, labels, key, 8, mesh, device_data=dev))

    batches = epoch(jax.random.PRNGKey(0))
    assert len(batches) == steps_per_epoch(50, 8) == 6
    seen = []
    for b in batches:
        assert set(b) == {"image", "label"}
        assert b["image"].dtype == jnp.uint8 and b["image"].shape == (8, 4, 4, 1)
        assert b["label"].dtype == jnp.int32 and b["label"].shape == (8,)
        assert b["image"].sharding.is_equivalent_to(batch_sharded(mesh), 4)
        assert b["label"].sharding.is_equivalent_to(batch_sharded(mesh), 1)
        ids = np.asarray(b["label"])
        np.testing.assert_array_equal(np.asarray(b["image"]), images[ids])  # pairs kept
        seen.extend(ids.tolist())
    assert len(seen) == len(set(seen)) == 48  # each example at most once; remainder dropped
    expected = np.asarray(jax.random.permutation(jax.random.PRNGKey(0), 50))[:48]
    np.testing.assert_array_equal(seen, expected)
    again = [int(i) for b in epoch(jax.random.PRNGKey(0)) for i in np.asarray(b["label"])]
    other = [int(i) for b in epoch(jax.random.PRNGKey(1)) for i in np.asarray(b["label"])]
    assert again == seen and other != seen


@pytest.mark.parametrize("on_device", [True, False])
def test_eval_batches_cover_every_example_once_with_weights(on_device):
    mesh = make_mesh()
    images, labels = _split(21)
    dev = to_device(images, labels, mesh) if on_device else None
    batches = list(eval_batches(images, labels, 8, mesh, device_data=dev))
    assert len(batches) == 3
    got, weights = [], []
    for b in batches:
        assert b["image"].shape == (8, 4, 4, 1) and b["weight"].dtype == jnp.float32
        assert b["weight"].sharding.is_equivalent_to(batch_sharded(mesh), 1)
        got.append(np.asarray(b["label"]))
        weights.append(np.asarray(b["weight"]))
    got, weights = np.concatenate(got), np.concatenate(weights)
    np.testing.assert_array_equal(weights, (np.arange(24) < 21).astype(np.float32))
    np.testing.assert_array_equal(got[weights > 0], np.arange(21))  # in order, exactly once


def test_batch_argument_errors():
    mesh = make_mesh()
    images, labels = _split(10)
    with pytest.raises(ValueError, match="positive multiple"):
        train_batches(images, labels, jax.random.PRNGKey(0), 0, mesh)
    with pytest.raises(ValueError, match="larger than"):
        train_batches(images, labels, jax.random.PRNGKey(0), 16, mesh)
    with pytest.raises(ValueError, match="same split"):
        dev = to_device(images[:5], labels[:5], mesh)
        eval_batches(images, labels, 4, mesh, device_data=dev)


_MULTI_DEVICE = textwrap.dedent("""
    import jax, numpy as np, pytest
    from signticket.data import eval_batches, to_device, train_batches
    from signticket.sharding import batch_sharded, make_mesh

    assert jax.device_count() == 8, jax.devices()
    mesh = make_mesh()
    images = np.random.RandomState(0).randint(0, 256, (100, 4, 4, 1)).astype(np.uint8)
    labels = np.arange(100, dtype=np.int32)
    dev = to_device(images, labels, mesh)
    key = jax.random.PRNGKey(0)
    fast = list(train_batches(images, labels, key, 16, mesh, device_data=dev))
    host = list(train_batches(images, labels, key, 16, mesh))
    assert len(fast) == len(host) == 6
    for a, b in zip(fast, host):
        for x in (a["image"], a["label"], b["image"]):
            assert x.sharding.is_equivalent_to(batch_sharded(mesh), x.ndim)
            shards = x.addressable_shards
            assert len(shards) == 8 and {s.device for s in shards} == set(jax.devices())
            assert all(s.data.shape[0] == 2 for s in shards)  # 16 rows over 8 devices
        np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
        np.testing.assert_array_equal(np.asarray(a["image"]), images[np.asarray(a["label"])])
    ev = list(eval_batches(images, labels, 16, mesh, device_data=dev))
    w = np.concatenate([np.asarray(b["weight"]) for b in ev])
    assert len(ev) == 7 and w.sum() == 100
    assert len(ev[-1]["image"].addressable_shards) == 8
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        train_batches(images, labels, key, 12, mesh, device_data=dev)
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        eval_batches(images, labels, 12, mesh)
    print("OK")
""")


def test_train_batches_split_over_8_devices():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [sys.executable, "-c", _MULTI_DEVICE], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# -- loading (synthetic cache) ------------------------------------------------------------------


def _fake_cache(data_dir, name, shape, n_train, n_test, classes=10):
    rs = np.random.RandomState(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rs.randint(0, 256, (n, *shape)).astype(np.uint8)
        labels = (np.arange(n) % classes).astype(np.int32)
        tfds_source.write_cache(tfds_source.cache_path(data_dir, name, split), images, labels)


def test_load_reads_cache_and_makes_stratified_deterministic_subsets(tmp_path, offline):
    _fake_cache(tmp_path, "cifar10", (32, 32, 3), 200, 50)
    full = data.load("cifar10", data_dir=tmp_path)
    assert full.num_classes == 10 and full.image_shape == (32, 32, 3)
    assert full.train_images.shape == (200, 32, 32, 3) and full.test_labels.shape == (50,)
    assert full.preprocess == Preprocess(
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), crop_padding=4, flip=True
    )
    sub = data.load("cifar10", data_dir=tmp_path, train_subset=40, test_subset=20, seed=1)
    assert np.bincount(sub.train_labels).tolist() == [4] * 10  # stratified
    assert np.bincount(sub.test_labels).tolist() == [2] * 10
    again = data.load("cifar10", data_dir=tmp_path, train_subset=40, test_subset=20, seed=1)
    other = data.load("cifar10", data_dir=tmp_path, train_subset=40, test_subset=20, seed=2)
    np.testing.assert_array_equal(sub.train_images, again.train_images)
    assert not np.array_equal(sub.train_images, other.train_images)
    assert data.load("cifar10", data_dir=tmp_path, augment=False).preprocess.flip is False
    with pytest.raises(ValueError, match="only 200"):
        data.load("cifar10", data_dir=tmp_path, train_subset=201)


def test_load_data_dir_from_env(tmp_path, monkeypatch, offline):
    _fake_cache(tmp_path, "mnist", (28, 28, 1), 30, 10)
    monkeypatch.setenv(tfds_source.DATA_DIR_ENV, str(tmp_path))
    ds = data.load("mnist")
    assert ds.train_images.shape == (30, 28, 28, 1)
    assert ds.preprocess == Preprocess((0.1307,), (0.3081,))  # no augmentation by default
    aug = data.load("mnist", augment=True).preprocess
    assert (aug.crop_padding, aug.flip) == (2, True)


def test_stratified_subset_keeps_class_shares():
    labels = np.repeat(np.arange(3), [600, 300, 100])
    idx = data.stratified_subset(labels, 100, seed=0)
    assert np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [60, 30, 10]


def test_cache_is_written_atomically_and_bad_cache_is_ignored(tmp_path):
    path = tfds_source.cache_path(tmp_path, "mnist", "train")
    images, labels = _images(n=5, h=28, w=28, c=1), np.arange(5, dtype=np.int32)
    tfds_source.write_cache(path, images, labels)
    assert sorted(p.name for p in path.parent.iterdir()) == ["mnist_train.npz"]  # no temp left
    got = tfds_source.read_cache(path, (28, 28, 1))
    np.testing.assert_array_equal(got[0], images)
    np.testing.assert_array_equal(got[1], labels)
    assert tfds_source.read_cache(path, (32, 32, 3)) is None  # wrong shape
    path.write_bytes(b"not a zip")
    assert tfds_source.read_cache(path, (28, 28, 1)) is None


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'") as e:
        data.load("cifar11")
    for name in data.names():
        assert name in str(e.value)
    assert data.names() == ["fashion_mnist", "mnist", "cifar10", "cifar100", "tiny_imagenet"]
    with pytest.raises(ValueError, match="imagenet_stream"):
        data.load("imagenet2012")


def test_internet_probe_returns_quickly():
    start = time.perf_counter()
    assert tfds_source.internet_available(timeout=2.0) in (True, False)
    assert time.perf_counter() - start < 5


def test_cifar10_unavailable_offline_is_fast_and_clear(tmp_path, monkeypatch):
    if tfds_source.internet_available():  # here: check the real no-network path; never download
        monkeypatch.setenv(tfds_source.OFFLINE_ENV, "1")
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as e:
        data.load("cifar10", data_dir=tmp_path)
    assert time.perf_counter() - start < 15
    msg = str(e.value)
    assert "'cifar10'" in msg and f"data_dir={tmp_path}" in msg
    assert f"python -m signticket.data.prepare cifar10 --data-dir {tmp_path}" in msg
    assert isinstance(e.value, ValueError)


def test_fashion_mnist_without_debian_files_says_apt_get(tmp_path, monkeypatch, offline):
    monkeypatch.setattr(tfds_source, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "missing"))
    with pytest.raises(DatasetUnavailableError, match="apt-get install -y dataset-fashion-mnist"):
        data.load("fashion_mnist", data_dir=tmp_path)


def test_imagenet_stream_unavailable_offline(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match=r"ILSVRC2012_img_train\.tar") as e:
        imagenet_stream("train", 8, make_mesh(), data_dir=tmp_path)
    assert time.perf_counter() - start < 15
    assert f"data_dir={tmp_path}" in str(e.value)


def test_prepare_cli_reports_unavailable(tmp_path, capsys, offline):
    assert prepare_cli.main(["cifar100", "--data-dir", str(tmp_path)]) == 2
    assert "'cifar100' is not available" in capsys.readouterr().err


def test_imagenet_tf_transforms_on_synthetic_jpegs():
    """The tf.data map functions of imagenet_stream, on JPEGs made here (no ImageNet needed)."""
    tfds_source.import_tfds()  # sets TensorFlow up as the data layer does
    import tensorflow as tf

    from signticket.data import imagenet

    rs = np.random.RandomState(0)
    jpeg = tf.io.encode_jpeg(rs.randint(0, 256, (60, 90, 3)).astype(np.uint8))
    example = {"image": jpeg, "label": tf.constant(7, tf.int64)}
    train_fn = imagenet._train_map(32, seed=5)
    a = train_fn(tf.constant(0, tf.int64), example)
    b = train_fn(tf.constant(0, tf.int64), example)
    c = train_fn(tf.constant(1, tf.int64), example)
    assert a["image"].shape == (32, 32, 3) and a["image"].dtype == tf.uint8
    assert int(a["label"]) == 7 and a["label"].dtype == tf.int32
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())
    ev = imagenet._eval_map(32)(example)
    assert ev["image"].shape == (32, 32, 3) and ev["image"].dtype == tf.uint8


# -- real data (integration) -------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``$SIGNTICKET_DATA_DIR`` or the default; Fashion-MNIST is prepared there on first use."""
    return tfds_source.resolve_data_dir(None)


def _tfds_checksums_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("tensorflow_datasets")
    return Path(spec.origin).parent / "url_checksums" / "fashion_mnist.txt"


@pytest.mark.integration
def test_fashion_mnist_real_offline(real_data_dir):
    checksums = _tfds_checksums_file()
    before = checksums.read_bytes() if checksums.exists() else None
    ds = data.load("fashion_mnist", data_dir=real_data_dir)
    # TFDS's own recorded checksums are left alone (ours go to the data dir).
    assert (checksums.read_bytes() if checksums.exists() else None) == before
    assert ds.train_images.shape == (60000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    assert np.bincount(ds.train_labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels, minlength=10).tolist() == [1000] * 10
    assert ds.train_labels.min() == 0 and ds.train_labels.max() == 9
    assert 60 < ds.train_images.mean() < 90  # real images (mean 0.286 * 255 = 72.9)
    assert ds.preprocess == Preprocess((0.2860,), (0.3530,))
    for split in ("train", "test"):
        assert tfds_source.cache_path(real_data_dir, "fashion_mnist", split).is_file()


@pytest.mark.integration
def test_fashion_mnist_second_load_uses_cache_without_tensorflow(real_data_dir):
    data.load("fashion_mnist", data_dir=real_data_dir)  # makes sure the cache exists
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from signticket import data
        start = time.perf_counter()
        ds = data.load("fashion_mnist", data_dir={str(real_data_dir)!r}, train_subset=1000)
        took = time.perf_counter() - start
        assert "tensorflow" not in sys.modules and "tensorflow_datasets" not in sys.modules
        assert ds.train_images.shape == (1000, 28, 28, 1) and ds.test_images.shape[0] == 10000
        assert np.bincount(ds.train_labels).tolist() == [100] * 10
        print(f"TOOK {{took:.2f}}")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    took = float(proc.stdout.split("TOOK")[1])
    assert took < 10, f"cached load took {took:.1f}s"
