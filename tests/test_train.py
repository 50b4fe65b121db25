import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signticket import optim
from signticket.sharding import batch_sharded, make_mesh
from signticket.train import Engine, NonFiniteLossError, check_finite

sys.path.insert(0, str(Path(__file__).parent))
from _engine_run import TinyNet, preprocess

ROOT = Path(__file__).resolve().parents[1]


def _run_subprocess(n_devices: int, out: Path) -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_engine_run.py"), str(out)],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    return dict(np.load(out))


def test_sharded_step_8_devices_equals_1_device(tmp_path):
    """Train steps, then a vmapped barrier curve with BN re-estimation, on 8 forced CPU
    devices equal the same on 1 device."""
    one = _run_subprocess(1, tmp_path / "one.npz")
    eight = _run_subprocess(8, tmp_path / "eight.npz")
    assert int(one.pop("n_devices")) == 1 and int(eight.pop("n_devices")) == 8
    assert one.keys() == eight.keys()
    for k in one:
        np.testing.assert_allclose(one[k], eight[k], atol=1e-5, rtol=1e-5, err_msg=k)


def _engine(tx=None, pre_forward=None):
    tx = tx or optim.masked_updates(optim.sgd(0.05, momentum=0.9))
    return Engine(TinyNet(), tx, preprocess, make_mesh(), pre_forward)


def _batch(mesh, seed=0, n=16):
    rs = np.random.RandomState(seed)
    return jax.device_put(
        {
            "image": rs.randint(0, 255, (n, 8, 8, 1)).astype(np.uint8),
            "label": rs.randint(0, 10, n).astype(np.int32),
        },
        batch_sharded(mesh),
    )


def test_init_state_with_a_mask_equals_setting_it_after_and_never_donates_the_callers():
    """``init_state(mask=m)`` places once what ``set_mask`` on a placed state then ``place``
    again gave; the steps donate that state, never the caller's mask or init params."""
    from signticket.masks import full_mask, magnitude_prune

    engine = _engine()
    batch = _batch(engine.mesh)
    fresh = engine.init_state(jax.random.PRNGKey(0), batch["image"])
    params = jax.tree.map(jnp.copy, fresh.params)
    mask = magnitude_prune(params, full_mask(params), 0.5, keep_dense=())
    before = engine.place(fresh.replace(opt_state=optim.set_mask(fresh.opt_state, mask)))
    now = engine.init_state(jax.random.PRNGKey(0), batch["image"], params=params,
                            batch_stats=fresh.batch_stats, mask=mask)
    chex.assert_trees_all_equal(before, now)
    for _ in range(2):
        before, _ = engine.train_step(before, batch)
        now, _ = engine.train_step(now, batch)
    chex.assert_trees_all_equal(before, now)
    for leaf in jax.tree.leaves((mask, params)):  # still the caller's: not donated
        assert not leaf.is_deleted()
        np.asarray(leaf)


def test_train_step_reduces_loss_and_updates_bn_stats():
    engine = _engine()
    batch = _batch(engine.mesh)
    state = engine.init_state(jax.random.PRNGKey(0), batch["image"])
    stats0 = jax.tree.map(np.asarray, state.batch_stats)
    losses = []
    for _ in range(30):
        state, m = engine.train_step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.85 * losses[0]
    assert int(state.step) == 30
    assert not np.allclose(stats0["bn0"]["mean"], state.batch_stats["bn0"]["mean"])
    sums = engine.eval_step(state, {**batch, "weight": jnp.ones(16)})
    assert float(sums["count"]) == 16.0


def test_pre_forward_hook_applies_in_training_only():
    # The hook zeroes every param: logits are 0 so the training loss is exactly log(10).
    def hook(params, hook_state, rng):
        return jax.tree.map(lambda p: p * hook_state["scale"], params)

    engine = _engine(pre_forward=hook)
    batch = _batch(engine.mesh)
    state = engine.init_state(
        jax.random.PRNGKey(0), batch["image"], hook_state={"scale": jnp.zeros(())}
    )
    state, m = engine.train_step(state, batch)
    np.testing.assert_allclose(float(m["loss"]), np.log(10), rtol=1e-6)


def test_reset_optimizer_keeps_mask_semantics():
    engine = _engine()
    batch = _batch(engine.mesh)
    state = engine.init_state(jax.random.PRNGKey(0), batch["image"])
    state, _ = engine.train_step(state, batch)
    fresh = engine.reset_optimizer(state)
    chex.assert_trees_all_equal(fresh.params, state.params)
    trace = jax.tree.leaves(fresh.opt_state.inner_state[1][0].trace)
    assert all(float(jnp.abs(t).sum()) == 0 for t in trace)


def test_bf16_compute_keeps_float32_state_pruned_zeros_and_tracks_float32():
    """Mixed precision: the step computes in bfloat16 but params, optimizer state and BN stats
    stay float32, pruned weights stay exactly zero, and the loss and gradient step track the
    float32 engine's to bfloat16 accuracy."""
    full = _engine()
    batch = _batch(full.mesh)
    state = full.init_state(jax.random.PRNGKey(0), batch["image"])
    mask = jax.tree.map(lambda p: jnp.arange(p.size).reshape(p.shape) % 3 != 0, state.params)
    tx = optim.masked_updates(optim.sgd(0.05, momentum=0.9), mask)
    f32 = Engine(TinyNet(), tx, preprocess, full.mesh)
    bf16 = Engine(TinyNet(), tx, preprocess, full.mesh, compute_dtype=jnp.bfloat16)
    start = f32.init_state(jax.random.PRNGKey(0), batch["image"],
                           params=jax.tree.map(lambda p, m: p * m, state.params, mask),
                           batch_stats=state.batch_stats)
    s32, s16 = f32.place(start), bf16.place(start)
    losses = []
    for _ in range(20):
        s32, m32 = f32.train_step(s32, batch)
        s16, m16 = bf16.train_step(s16, batch)
        np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=0.05)
        losses.append(float(m16["loss"]))
    assert losses[-1] < 0.85 * losses[0]
    for tree in (s16.params, s16.opt_state, s16.batch_stats):
        floats = {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
        assert floats == {jnp.dtype(jnp.float32)}
    for p, m in zip(jax.tree.leaves(s16.params), jax.tree.leaves(mask), strict=True):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
    chex.assert_trees_all_close(s16.params, s32.params, atol=0.05)
    sums = bf16.eval_step(s16, {**batch, "weight": jnp.ones(16)})
    assert sums["loss_sum"].dtype == jnp.float32 and float(sums["count"]) == 16.0
    with pytest.raises(ValueError, match="floating dtype"):
        Engine(TinyNet(), tx, preprocess, full.mesh, compute_dtype=jnp.int8)


def test_check_finite():
    check_finite({"loss": 1.0}, "x")
    with pytest.raises(NonFiniteLossError, match="nan"):
        check_finite({"loss": float("nan")}, "epoch 3")
