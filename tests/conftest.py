"""Shared fixtures: tiny synthetic params pytrees shaped like Flax models."""

import errno
import shutil

from signticket import cpu_tuning

cpu_tuning.apply()  # as the CLI does, before JAX starts its backend

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402


def make_params(key=0):
    """A small params tree with convs, dense layers, BN, biases and a head."""
    k = jax.random.split(jax.random.PRNGKey(key), 5)
    return {
        "conv0": {"kernel": jax.random.normal(k[0], (3, 3, 1, 4))},
        "bn0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        "conv1": {"kernel": jax.random.normal(k[1], (3, 3, 4, 8))},
        "stage0_block0": {
            "conv1": {"kernel": jax.random.normal(k[2], (3, 3, 8, 8))},
            "bn1": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
        },
        "fc0": {
            "kernel": jax.random.normal(k[3], (8, 16)),
            "bias": jnp.full((16,), 0.1, jnp.float32),
        },
        "head": {"kernel": jax.random.normal(k[4], (16, 10)), "bias": jnp.zeros(10)},
    }


def synthetic_dataset(n: int = 96, n_test: int = 40, flip: bool = False):
    """A tiny learnable image dataset (8x8x1, brightness encodes the label) in the real
    :class:`signticket.data.Dataset` container."""
    import numpy as np

    from signticket import data as data_lib

    rs = np.random.RandomState(0)
    labels = rs.randint(0, 10, n).astype(np.int32)
    images = (rs.randint(0, 60, (n, 8, 8, 1)) + labels[:, None, None, None] * 19).astype(np.uint8)
    return data_lib.Dataset(
        name="synthetic",
        num_classes=10,
        image_shape=(8, 8, 1),
        train_images=images,
        train_labels=labels,
        test_images=images[:n_test],
        test_labels=labels[:n_test],
        preprocess=data_lib.Preprocess(mean=(0.5,), std=(0.25,), flip=flip),
    )


@pytest.fixture
def params():
    return make_params()


def pytest_configure(config):
    # Share XLA compilations between xdist workers and test runs (as the CLI does).
    from signticket.runs import enable_compilation_cache

    enable_compilation_cache()


def pytest_collection_modifyitems(items):
    # The `longest` tests (every reproduce target's smoke run, minutes each) go first: the
    # Makefile feeds xdist's two workers one test at a time (--maxschedchunk 1), so they share
    # these out at the start. In collection order they ran in a row on one worker at the end
    # while the other sat idle (a 2-core AVX2 VM: 16+ min idle, 72 min to reach 88 %; now the
    # whole run takes 46 min there).
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)


# A two-layer tanh MLP's loss on fixed inputs, with a sin term on every leaf so that no gradient
# vanishes: the dense-to-sparse transforms' tests (RiGL, AC/DC, STR) share it.
TOY_X = jnp.linspace(-1.0, 1.0, 32).reshape(4, 8)


def toy_mlp_loss(params, x):
    h = x @ params["fc0"]["kernel"] + params["fc0"]["bias"]
    out = jnp.tanh(h) @ params["head"]["kernel"] + params["head"]["bias"]
    conv = sum(jnp.sum(jnp.sin(p)) for p in jax.tree.leaves(params))
    return jnp.sum(out**2) / 100.0 + conv


def cut_short_background_write(checkpointer, step: int) -> None:
    """Make ``checkpointer``'s background write of ``step`` fail as on a disk that filled
    meanwhile: the write ends, its step directory is removed (cut short), and orbax's next
    wait raises ENOSPC, once."""
    manager = checkpointer.manager
    manager.wait_until_finished()
    shutil.rmtree(checkpointer.directory / "checkpoints" / str(step))
    finished = manager.wait_until_finished

    def fails_once():
        manager.wait_until_finished = finished
        raise OSError(errno.ENOSPC, "No space left on device")

    manager.wait_until_finished = fails_once


def restored(directory, like):
    """``(step, state)`` of the newest checkpoint in ``directory`` (a checkpointer opened and
    closed for it), shaped like ``like``."""
    from signticket.checkpoint import Checkpointer

    ckpt = Checkpointer(directory)
    try:
        return ckpt.restore(like)
    finally:
        ckpt.close()
