"""Run a few sharded train steps of a tiny BN convnet on synthetic data; save the params.

Used by test_train.py in subprocesses with different forced host device counts.
"""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from signticket import masks, optim
from signticket.sharding import batch_sharded, make_mesh
from signticket.train import Engine


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), use_bias=False, name="conv0")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn0")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(10, name="head")(x)


def preprocess(images, rng, train):
    x = images.astype(jnp.float32) / 255.0
    if train and rng is not None:  # exercises per-example randomness under sharding
        flip = jax.random.bernoulli(rng, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1], x)
    return x


def run(steps: int = 6):
    mesh = make_mesh()
    tx = optim.masked_updates(optim.sgd(0.1, momentum=0.9, weight_decay=5e-4))
    engine = Engine(TinyNet(), tx, preprocess, mesh)
    rs = np.random.RandomState(0)
    images = rs.randint(0, 255, (64, 8, 8, 1)).astype(np.uint8)
    labels = rs.randint(0, 10, 64).astype(np.int32)
    state = engine.init_state(jax.random.PRNGKey(0), images)
    mask = masks.magnitude_prune(state.params, optim.get_mask(state.opt_state), 0.5)
    state = state.replace(
        params=masks.apply_mask(state.params, mask), opt_state=optim.set_mask(state.opt_state, mask)
    )
    for i in range(steps):
        sl = slice((i % 4) * 16, (i % 4 + 1) * 16)
        batch = jax.device_put({"image": images[sl], "label": labels[sl]}, batch_sharded(mesh))
        state, _metrics = engine.train_step(state, batch)
    return state


def curve(state):
    """A barrier curve (BN re-estimated, all alphas in one vmapped program) from a fresh init
    to the trained state, on the same mesh of every device."""
    from types import SimpleNamespace

    from signticket import lmc

    rs = np.random.RandomState(1)
    data = SimpleNamespace(
        train_images=rs.randint(0, 255, (64, 8, 8, 1)).astype(np.uint8),
        train_labels=rs.randint(0, 10, 64).astype(np.int32),
        test_images=rs.randint(0, 255, (40, 8, 8, 1)).astype(np.uint8),
        test_labels=rs.randint(0, 10, 40).astype(np.int32),
    )
    init = TinyNet().init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 1)))
    trained = {"params": state.params, "batch_stats": state.batch_stats}
    c = lmc.barrier_curve(TinyNet(), preprocess, init, trained, data, bn_batches=2,
                          batch_size=16, alpha_chunk=11, mesh=make_mesh())
    return {"curve_error": np.asarray(c.error), "curve_loss": np.asarray(c.loss)}


if __name__ == "__main__":
    state = run()
    flat = {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path((state.params, state.batch_stats))[0]
    }
    flat.update(curve(state))
    np.savez(sys.argv[1], n_devices=len(jax.devices()), **flat)
    print(os.environ.get("XLA_FLAGS"), len(jax.devices()))
