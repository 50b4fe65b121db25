"""The streaming input path (tf.data) through the same epoch loop as in-memory data.

ImageNet comes from TFDS's mock builder (random JPEGs through the real reader and our maps)."""

import threading

import chex
import jax
import numpy as np
import optax
import pytest
from _mock_tfds import mock_streaming

from signticket import data as data_lib
from signticket import models
from signticket.checkpoint import Checkpointer
from signticket.fit import evaluate, fit
from signticket.sharding import make_mesh
from signticket.train import Engine

pytest.importorskip("tensorflow_datasets")

N_TRAIN, N_TEST, SIZE = 20, 10, 32


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    with mock_streaming(24):
        yield data_lib.load_stream("imagenet2012", data_dir=tmp_path_factory.mktemp("data"),
                                   train_subset=N_TRAIN, test_subset=N_TEST, image_size=SIZE)


def test_mocked_file_system_redirects_only_the_thread_building_the_pipeline(imagenet, tmp_path):
    # TFDS's mock swaps the file system while a pipeline is built; a checkpoint written
    # meanwhile by orbax's threads must still land on disk (the harness, not TFDS, is tested).
    from etils import epath
    from tensorflow_datasets.testing import test_utils

    elsewhere, here = epath.Path(tmp_path / "elsewhere"), epath.Path(tmp_path / "here")
    with test_utils.MockFs():  # orbax creates its directories through epath
        writer = threading.Thread(target=elsewhere.mkdir, kwargs={"parents": True})
        writer.start()
        writer.join()
        here.mkdir(parents=True)
    assert elsewhere.is_dir()
    assert not here.exists()


def _host(batches):
    return [{k: np.asarray(v) for k, v in b.items()} for b in batches]


def test_epoch_stream_is_a_function_of_seed_and_epoch(imagenet):
    mesh = make_mesh()
    first = _host(imagenet.train_epoch(1, 8, 0, mesh))
    second = _host(imagenet.train_epoch(2, 8, 0, mesh))
    # A fresh pipeline for epoch 2, with no epoch 1 before it: what a resumed run sees.
    resumed = _host(imagenet.train_epoch(2, 8, 0, mesh))
    assert len(first) == len(second) == N_TRAIN // 8
    for a, b in zip(second, resumed, strict=True):
        chex.assert_trees_all_equal(a, b)
    b0 = first[0]
    assert b0["image"].shape == (8, SIZE, SIZE, 3) and b0["image"].dtype == np.uint8
    assert b0["label"].dtype == np.int32
    # Epochs differ (order and augmentation), as do seeds.
    assert any((a["image"] != b["image"]).any() for a, b in zip(first, second, strict=True))
    other = _host(imagenet.train_epoch(2, 8, 1, mesh))
    assert any((a["image"] != b["image"]).any() for a, b in zip(second, other, strict=True))


def test_eval_stream_covers_every_example_once_in_order(imagenet):
    batches = _host(imagenet.eval_batches(8, make_mesh()))
    weights = np.concatenate([b["weight"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert weights.sum() == N_TEST and (weights[N_TEST:] == 0).all()
    images, host_labels = imagenet.host_arrays("test")
    assert images.shape == (N_TEST, SIZE, SIZE, 3)
    np.testing.assert_array_equal(labels[:N_TEST], host_labels)
    # Eval is deterministic (resize + center crop, no randomness).
    again = _host(imagenet.eval_batches(8, make_mesh()))
    chex.assert_trees_all_equal(batches, again)


def test_host_arrays_refuse_a_split_too_large_for_memory(imagenet, monkeypatch):
    monkeypatch.setattr(data_lib.stream, "MAX_IN_MEMORY", N_TRAIN - 1)
    imagenet._arrays.pop("train", None)
    with pytest.raises(ValueError, match="too large to hold in memory"):
        _ = imagenet.train_images


def _engine(mesh, epochs, steps):
    model = models.get("convnet", num_classes=1000, channels=(4, 8))
    tx = optax.sgd(optax.cosine_decay_schedule(0.05, epochs * steps), momentum=0.9)
    return Engine(model, tx, data_lib.preprocess_for("imagenet2012"), mesh)


def test_fit_on_a_stream_resumes_exactly(imagenet, tmp_path):
    """Kill after epoch 1 + resume == uninterrupted (same batches, same augmentation)."""
    mesh = make_mesh()
    engine = _engine(mesh, 2, N_TRAIN // 8)
    init = lambda: engine.init_state(jax.random.PRNGKey(0), data_lib.sample_images(imagenet))
    straight, summary = fit(engine, init(), imagenet, epochs=2, batch_size=8, data_seed=3,
                            progress=False)
    ckpt = Checkpointer(tmp_path / "run")
    fit(engine, init(), imagenet, epochs=1, batch_size=8, data_seed=3, checkpointer=ckpt,
        progress=False)
    ckpt.close()
    ckpt = Checkpointer(tmp_path / "run")
    resumed, summary2 = fit(engine, init(), imagenet, epochs=2, batch_size=8, data_seed=3,
                            checkpointer=ckpt, progress=False)
    ckpt.close()
    chex.assert_trees_all_close(straight.params, resumed.params, rtol=1e-6, atol=1e-6)
    assert summary == pytest.approx(summary2)
    # evaluate() takes the same source, and agrees with the in-memory path on its arrays.
    images, labels = imagenet.host_arrays("test")
    in_memory = data_lib.Dataset("m", 1000, (SIZE, SIZE, 3), images[:1], labels[:1], images,
                                 labels, imagenet.preprocess)
    assert evaluate(engine, straight, imagenet, batch_size=8) == pytest.approx(
        evaluate(engine, straight, in_memory, batch_size=8), rel=1e-5)


def test_device_source_keeps_the_in_memory_order():
    """The in-memory path's order is unchanged by the source interface: epoch e's
    permutation is ``fold_in(PRNGKey(data_seed), e)``."""
    from conftest import synthetic_dataset

    ds, mesh = synthetic_dataset(), make_mesh()
    source = data_lib.as_source(ds)
    got = _host(source.train_epoch(3, 16, 7, mesh))
    want = _host(data_lib.train_batches(ds.train_images, ds.train_labels,
                                        jax.random.fold_in(jax.random.PRNGKey(7), 3), 16, mesh))
    chex.assert_trees_all_equal(got, want)


def test_prefetch_to_device_keeps_order_and_length():
    assert list(data_lib.prefetch_to_device(iter(range(5)), size=2)) == [0, 1, 2, 3, 4]
    assert list(data_lib.prefetch_to_device(iter([]), size=2)) == []


def test_train_sample_is_fixed_by_its_seed(imagenet):
    a_x, a_y = imagenet.train_sample(6, seed=1)
    b_x, b_y = imagenet.train_sample(6, seed=1)
    c_x, _ = imagenet.train_sample(6, seed=2)
    assert a_x.shape == (6, SIZE, SIZE, 3) and a_x.dtype == np.uint8
    np.testing.assert_array_equal(a_x, b_x)
    np.testing.assert_array_equal(a_y, b_y)
    assert (a_x != c_x).any()


def test_device_source_train_sample_is_lmc_s_subset():
    from conftest import synthetic_dataset

    ds = synthetic_dataset()
    x, y = data_lib.as_source(ds).train_sample(10, seed=4)
    idx = np.random.RandomState(4).permutation(ds.num_train)[:10]
    np.testing.assert_array_equal(x, ds.train_images[idx])
    np.testing.assert_array_equal(y, ds.train_labels[idx])
