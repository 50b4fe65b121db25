"""The permuted-masks matching and the Sign-In Hessian on a streamed dataset (ImageNet through
tf.data, TFDS's mock builder): they read through the Source API and never materialize the
training split on the host (``host_arrays`` is made to refuse it here)."""

import chex
import jax
import numpy as np
import pytest
from _mock_tfds import mock_streaming
from conftest import synthetic_dataset

from signticket import data as data_lib
from signticket.errors import UserError
from signticket.experiments import sign_in
from signticket.experiments.configs import permuted_imagenet_resnet50
from signticket.rebasin import procedure as proc
from signticket.sharding import make_mesh

pytest.importorskip("tensorflow_datasets")

N_TRAIN, SIZE = 20, 32


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    with mock_streaming(24):
        yield data_lib.load_stream("imagenet2012", data_dir=tmp_path_factory.mktemp("data"),
                                   train_subset=N_TRAIN, test_subset=8, image_size=SIZE)


@pytest.fixture
def no_host_train_split(imagenet, monkeypatch):
    """Any read of the whole training split as arrays fails, as it would on real ImageNet."""
    monkeypatch.setattr(data_lib.stream, "MAX_IN_MEMORY", N_TRAIN - 1)
    imagenet._arrays.pop("train", None)
    return imagenet


def _matching_config(batches: int, augment: bool):
    c = permuted_imagenet_resnet50.get_config()
    c.matching.batches, c.matching.batch_size, c.matching.augment = batches, 4, augment
    return c


def _host(xs):
    return [np.asarray(x) for x in xs]


def test_augmented_matching_batches_are_the_training_stream_normalized(no_host_train_split):
    stream = no_host_train_split
    whole = _host(proc._matching_batches(_matching_config(0, True), stream, seed=3))
    # batches = 0: one whole epoch, the last partial batch dropped.
    assert len(whole) == N_TRAIN // 4
    assert all(b.shape == (4, SIZE, SIZE, 3) and b.dtype == np.float32 for b in whole)
    # They are the stream's epoch MATCHING_EPOCH of data seed `seed` (tf.data's crop + flip),
    # normalized on device; no training epoch (1-based) reads that order.
    raw = [np.asarray(b["image"]) for b in stream.train_epoch(proc.MATCHING_EPOCH, 4, 3,
                                                             make_mesh())]
    expected = [np.asarray(stream.preprocess(jax.numpy.asarray(r), None, False)) for r in raw]
    chex.assert_trees_all_close(whole, expected[: len(whole)], atol=1e-6)
    # A fixed number of batches is that many of the same stream; another seed, other images.
    first2 = _host(proc._matching_batches(_matching_config(2, True), stream, seed=3))
    chex.assert_trees_all_close(first2, whole[:2], atol=1e-6)
    other = _host(proc._matching_batches(_matching_config(2, True), stream, seed=4))
    assert not np.allclose(other[0], whole[0])


def test_unaugmented_matching_batches_are_a_train_sample(no_host_train_split):
    stream = no_host_train_split
    got = _host(proc._matching_batches(_matching_config(2, False), stream, seed=5))
    images, _ = stream.train_sample(8, seed=5)
    expected = [np.asarray(stream.preprocess(jax.numpy.asarray(images[i:i + 4]), None, False))
                for i in (0, 4)]
    chex.assert_trees_all_close(got, expected, atol=1e-6)


def test_matching_asks_for_no_more_than_the_stream_has(imagenet):
    with pytest.raises(UserError, match="needs 40 training examples"):
        list(proc._matching_batches(_matching_config(10, True), imagenet, seed=0))


def test_sign_in_hessian_sample_reads_a_stream_through_train_sample(no_host_train_split):
    stream = no_host_train_split
    x, y = sign_in.hessian_sample(stream, 6)
    ex, ey = stream.train_sample(6, seed=0)
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)
    # In memory it stays the first n examples (the tables computed so far keep their inputs).
    mem = synthetic_dataset(n=16, n_test=8)
    mx, my = sign_in.hessian_sample(mem, 5)
    np.testing.assert_array_equal(mx, mem.train_images[:5])
    np.testing.assert_array_equal(my, mem.train_labels[:5])
    assert data_lib.train_steps(stream, 8) == N_TRAIN // 8
