import sys
import types
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signticket import lmc, masks

sys.path.insert(0, str(Path(__file__).parent))
from _engine_run import TinyNet, preprocess


def _data(n_train=64, n_test=40):
    rs = np.random.RandomState(0)
    return types.SimpleNamespace(
        train_images=rs.randint(0, 255, (n_train, 8, 8, 1)).astype(np.uint8),
        train_labels=rs.randint(0, 10, n_train).astype(np.int32),
        test_images=rs.randint(0, 255, (n_test, 8, 8, 1)).astype(np.uint8),
        test_labels=rs.randint(0, 10, n_test).astype(np.int32),
    )


def _variables(seed):
    v = TinyNet().init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)))
    # non-trivial running stats so "interpolated" and "re-estimated" differ
    v["batch_stats"] = jax.tree.map(lambda x: x + 0.3 * (seed + 1), v["batch_stats"])
    return v


def test_interpolate_endpoints_exact():
    a, b = _variables(0)["params"], _variables(1)["params"]
    chex.assert_trees_all_equal(lmc.interpolate(a, b, 0.0), a)
    chex.assert_trees_all_equal(lmc.interpolate(a, b, 1.0), b)
    mid = lmc.interpolate(a, b, 0.5)
    chex.assert_trees_all_close(mid, jax.tree.map(lambda x, y: (x + y) / 2, a, b))


@pytest.mark.parametrize("reestimate", [True, False])
def test_vmapped_curve_equals_per_alpha_loop(reestimate):
    a, b, data = _variables(0), _variables(1), _data()
    kw = dict(bn_batches=2, batch_size=16, reestimate_bn=reestimate)
    vm = lmc.barrier_curve(TinyNet(), preprocess, a, b, data, **kw)
    loop = lmc.barrier_curve(TinyNet(), preprocess, a, b, data, loop=True, **kw)
    chunked = lmc.barrier_curve(TinyNet(), preprocess, a, b, data, alpha_chunk=4, **kw)
    chex.assert_trees_all_close(vm, loop, atol=1e-5)
    chex.assert_trees_all_close(vm, chunked, atol=1e-5)
    assert vm.error.shape == (11,)


def test_network_with_itself_has_zero_barrier():
    a, data = _variables(0), _data()
    curve = lmc.barrier_curve(TinyNet(), preprocess, a, a, data, bn_batches=2, batch_size=16)
    assert float(lmc.error_barrier(curve)) == pytest.approx(0.0, abs=1e-6)
    assert float(lmc.loss_barrier(curve)) == pytest.approx(0.0, abs=1e-5)


def test_barrier_definition():
    curve = lmc.BarrierCurve(jnp.array([0.0, 0.5, 1.0]), jnp.array([0.1, 0.5, 0.3]), jnp.zeros(3))
    assert float(lmc.error_barrier(curve)) == pytest.approx(0.5 - 0.2)


class InputBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn0")(x)


def test_bn_reestimation_is_average_of_batch_statistics():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 4, 4, 2)) * 2 + 1
    v = InputBN().init(jax.random.PRNGKey(1), x[0])
    stats = lmc.reestimate_batch_stats(InputBN(), v["params"], v["batch_stats"], x)
    mean = jnp.mean(x, axis=(1, 2, 3)).mean(0)
    var = jnp.var(x, axis=(1, 2, 3)).mean(0)
    chex.assert_trees_all_close(stats["bn0"]["mean"], mean, atol=1e-5)
    chex.assert_trees_all_close(stats["bn0"]["var"], var, atol=1e-5)


def test_bad_input():
    a, b, data = _variables(0), _variables(1), _data()
    with pytest.raises(ValueError, match="from exactly 0 to exactly 1"):
        lmc.barrier_curve(TinyNet(), preprocess, a, b, data, alphas=[0.1, 0.5, 1.0])
    ma = masks.random_mask(jax.random.PRNGKey(0), a["params"], 0.5)
    mb = masks.random_mask(jax.random.PRNGKey(1), a["params"], 0.5)
    with pytest.raises(ValueError, match="different masks"):
        lmc.barrier_curve(TinyNet(), preprocess, a, b, data, mask_a=ma, mask_b=mb)
    other = {"params": {"head": a["params"]["head"]}, "batch_stats": a["batch_stats"]}
    with pytest.raises(ValueError, match="structures differ"):
        lmc.barrier_curve(TinyNet(), preprocess, a, other, data)


FIXTURES = Path(__file__).parent / "fixtures"


def test_both_barrier_definitions_on_the_official_fixture_curve():
    """The fixture holds a fixed asymmetric curve and the official AWS formula's values on it
    (calculate_error_barrier.py: errors - (errors[0] + errors[-1]) / 2)."""
    import json

    fx = json.loads((FIXTURES / "aws_barrier_curve.json").read_text())
    error = 1 - jnp.asarray(fx["accuracy_percent"]) / 100
    curve = lmc.BarrierCurve(jnp.asarray(fx["alphas"]), error, error * 2)
    assert 100 * float(lmc.error_barrier_midpoint_mean(curve)) == pytest.approx(
        fx["official_barrier_percent"], abs=1e-4)
    chord = (1 - curve.alphas) * error[0] + curve.alphas * error[-1]
    over_chord = float(jnp.max(error - chord))
    assert float(lmc.error_barrier_over_chord(curve)) == pytest.approx(over_chord, abs=1e-6)
    # the endpoints differ by 10 points and the peak is near one end: the definitions differ
    assert abs(over_chord - fx["official_barrier_percent"] / 100) > 1e-3
    assert float(lmc.loss_barrier_midpoint_mean(curve)) == pytest.approx(
        2 * float(lmc.error_barrier_midpoint_mean(curve)), abs=1e-5)
    assert lmc.error_barrier is lmc.error_barrier_over_chord


def test_definitions_agree_at_the_midpoint_and_for_equal_endpoints():
    curve = lmc.BarrierCurve(jnp.array([0.0, 0.5, 1.0]), jnp.array([0.1, 0.5, 0.3]), jnp.zeros(3))
    assert float(lmc.error_barrier_midpoint_mean(curve)) == pytest.approx(0.3)
    assert float(lmc.error_barrier_over_chord(curve)) == pytest.approx(0.3)
    flat = lmc.BarrierCurve(jnp.linspace(0, 1, 5), jnp.array([0.2, 0.3, 0.6, 0.25, 0.2]),
                            jnp.zeros(5))
    assert float(lmc.error_barrier_midpoint_mean(flat)) == pytest.approx(
        float(lmc.error_barrier_over_chord(flat)))


def test_ema_reestimation_is_the_momentum_recursion_from_fresh_stats():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 4, 4, 2)) * 2 + 1
    v = InputBN().init(jax.random.PRNGKey(1), x[0])
    stale = jax.tree.map(lambda s: s + 5.0, v["batch_stats"])  # must be ignored
    stats = lmc.reestimate_batch_stats_ema(InputBN(), v["params"], stale, x)
    mean, var = jnp.zeros(2), jnp.ones(2)
    for xb in x:  # PyTorch momentum 0.1 == flax momentum 0.9
        mean = 0.9 * mean + 0.1 * jnp.mean(xb, axis=(0, 1, 2))
        var = 0.9 * var + 0.1 * jnp.var(xb, axis=(0, 1, 2))
    chex.assert_trees_all_close(stats["bn0"]["mean"], mean, atol=1e-5)
    chex.assert_trees_all_close(stats["bn0"]["var"], var, atol=1e-5)


def test_ema_curve_runs_and_differs_from_average():
    a, b, data = _variables(0), _variables(1), _data()
    kw = dict(bn_batches=0, batch_size=16)
    ema = lmc.barrier_curve(TinyNet(), preprocess, a, b, data, bn_mode="ema", **kw)
    avg = lmc.barrier_curve(TinyNet(), preprocess, a, b, data, **kw)
    assert ema.error.shape == avg.error.shape == (11,)
    assert not np.allclose(ema.loss, avg.loss)
    with pytest.raises(ValueError, match="unknown bn_mode"):
        lmc.barrier_curve(TinyNet(), preprocess, a, b, data, bn_mode="magic", **kw)
