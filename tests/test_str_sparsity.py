"""STR (soft threshold reparameterisation) as an optax transform, with plain SGD and Sign-In,
checked against the official STR code (RAIVNLab/STR utils/conv_type.py, main.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TOY_X, make_params, toy_mlp_loss

from signticket import optim
from signticket.sign_in import sign_in
from signticket.str_sparsity import initial_params, soft_threshold, sparsity, str_sparsity
from signticket.tree import is_prunable

X = TOY_X
_loss = toy_mlp_loss


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_one_step_is_sgd_on_latent_and_threshold_through_the_soft_threshold():
    """The transform's gradients are autodiff of L(sign(W) relu(|W| - sigmoid(s)))."""
    latent = make_params()
    s0, lr = -1.0, 0.1
    params = initial_params(latent, s0)
    tx = str_sparsity(optax.sgd(lr), s_init=s0, latent=latent)
    state = tx.init(params)

    def loss_of(w, s):
        theta = {**w, "conv1": {"kernel": soft_threshold(w["conv1"]["kernel"], s)}}
        return _loss(theta, X)

    # reference for one layer: plain SGD on (W, s) of conv1 by autodiff
    w_ref = {**params, "conv1": {"kernel": latent["conv1"]["kernel"]}}
    gw, gs = jax.grad(loss_of, argnums=(0, 1))(w_ref, jnp.asarray(s0))
    w1 = w_ref["conv1"]["kernel"] - lr * gw["conv1"]["kernel"]
    s1 = s0 - lr * gs
    u, state = tx.update(jax.grad(_loss)(params, X), state, params)
    new = optax.apply_updates(params, u)
    chex.assert_trees_all_close(state.latent["conv1"]["kernel"], w1, atol=1e-5)
    assert float(state.s["conv1"]["kernel"]) == pytest.approx(float(s1), abs=1e-5)
    chex.assert_trees_all_close(new["conv1"]["kernel"], soft_threshold(w1, s1), atol=1e-5)
    chex.assert_trees_all_equal(optim.get_mask(state)["conv1"]["kernel"],
                                new["conv1"]["kernel"] != 0)


def test_one_step_with_decay_equals_the_closed_form():
    """Linear loss <G, theta> on one layer, momentum-free SGD, decay λ on W and on s:
    W1 = W0 - lr (G 1[|W0| > g] + λ W0), s1 = s0 - lr (-g (1 - g) Σ G sign(W0) 1[...] + λ s0),
    theta1 = sign(W1) relu(|W1| - sigmoid(s1)); inactive entries move by decay alone."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    w0 = {"fc0": {"kernel": 0.3 * jax.random.normal(k1, (16, 8))}}
    gmat = jax.random.normal(k2, (16, 8))
    s0, lr, lam = -1.5, 0.2, 0.05
    tx = str_sparsity(optax.sgd(lr), s_init=s0, weight_decay=lam, latent=w0)
    theta0 = initial_params(w0, s0)
    state = tx.init(theta0)
    u, state = tx.update({"fc0": {"kernel": gmat}}, state, theta0)
    theta1 = optax.apply_updates(theta0, u)["fc0"]["kernel"]

    w, g = np.asarray(w0["fc0"]["kernel"], np.float64), np.asarray(gmat, np.float64)
    thr = 1 / (1 + np.exp(-s0))
    active = np.abs(w) > thr
    assert 0 < active.mean() < 1  # both kinds of entry are exercised
    w1 = w - lr * (g * active + lam * w)
    s1 = s0 - lr * (-thr * (1 - thr) * np.sum(g * np.sign(w) * active) + lam * s0)
    expect = np.sign(w1) * np.maximum(np.abs(w1) - 1 / (1 + np.exp(-s1)), 0)
    np.testing.assert_allclose(state.latent["fc0"]["kernel"], w1, rtol=1e-5, atol=1e-6)
    assert float(state.s["fc0"]["kernel"]) == pytest.approx(s1, rel=1e-5)
    np.testing.assert_allclose(theta1, expect, rtol=1e-5, atol=1e-6)


def test_latent_init_keeps_sub_threshold_weights_alive():
    """The latent W is the dense init, not the thresholded theta the model starts from: an
    entry below the initial threshold is 0 in theta but keeps its W, so it can come back."""
    w0 = {"fc0": {"kernel": jnp.array([[0.05, -0.5], [0.3, -0.02]])}}
    s0 = _logit(0.1)
    theta0 = initial_params(w0, s0)
    assert float(theta0["fc0"]["kernel"][0, 0]) == 0.0
    state = str_sparsity(optax.sgd(0.1), s_init=s0, latent=w0).init(theta0)
    chex.assert_trees_all_equal(state.latent["fc0"]["kernel"], w0["fc0"]["kernel"])
    chex.assert_trees_all_equal(state.mask["fc0"]["kernel"],
                                jnp.array([[False, True], [True, False]]))
    # a threshold that falls (s pushed down) re-activates the entry: theta = W - g(s) > 0
    tx = str_sparsity(optax.sgd(1.0), s_init=s0, latent=w0)
    st = tx.init(theta0)
    st = st._replace(s={"fc0": {"kernel": jnp.asarray(_logit(0.01), jnp.float32) + 1.0}})
    u, st = tx.update({"fc0": {"kernel": jnp.zeros((2, 2))}}, st, theta0)
    assert float(optax.apply_updates(theta0, u)["fc0"]["kernel"][0, 0]) > 0


def test_sparsity_reads_the_threshold_and_weights_layers_by_size():
    """A threshold at the 90 % quantile of |W| makes that layer 90 % sparse; the total is
    weighted by layer size (official main.py), not a mean of the layers' percentages."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    big = 0.2 * jax.random.normal(k1, (50, 40))  # 2000 entries; threshold < 1
    small = 0.1 * jax.random.normal(k2, (10, 10))  # 100 entries
    w0 = {"fc0": {"kernel": big}, "head": {"kernel": small}}
    q = float(np.quantile(np.abs(np.asarray(big)), 0.9))
    tx = str_sparsity(optax.sgd(0.1), s_init=_logit(q), latent=w0)
    overall, per_layer, thr = sparsity(tx.init(initial_params(w0, _logit(q))))
    assert per_layer["fc0/kernel"] == pytest.approx(0.9, abs=1 / 2000)
    assert thr["fc0/kernel"] == pytest.approx(q, rel=1e-5)
    expect_small = float(np.mean(np.abs(np.asarray(small)) <= q))
    assert per_layer["head/kernel"] == pytest.approx(expect_small)
    assert overall == pytest.approx((2000 * per_layer["fc0/kernel"] + 100 * expect_small) / 2100)


def test_default_scope_is_every_kernel_like_the_official_configs():
    """First layer and classifier are STRConv in the official configs; norms and biases plain."""
    state = str_sparsity(optax.sgd(0.1)).init(make_params())
    assert state.latent["head"]["kernel"] is not None
    assert state.latent["conv0"]["kernel"] is not None
    assert state.latent["bn0"]["scale"] is None and state.latent["head"]["bias"] is None
    scoped = str_sparsity(optax.sgd(0.1), prunable=is_prunable).init(make_params())
    assert scoped.latent["head"]["kernel"] is None


def test_sign_in_inner_owns_the_decay_and_decays_nothing_twice():
    """Sign-In over STR with the decay placed as PyTorch would (λ on m, w, s, biases; none on
    their product W) and given to Sign-In only: zero loss gradient, one momentum-free step:
    W1 = W0 (1 - lr λ)^2, s1 = s0 (1 - lr λ), bias1 = bias0 (1 - lr λ), and the head's kernel
    (not thresholded, but a Sign-In kernel) (1 - lr λ)^2, not (1 - lr λ)^3."""
    w0 = make_params()
    s0, lr, lam = -4.0, 0.1, 0.3
    inner = sign_in(optax.sgd(lr), reset_every=None, weight_decay=lam, mw_weight_decay=lam)
    tx = str_sparsity(inner, s_init=s0, weight_decay=0.0, prunable=is_prunable, latent=w0)
    theta0 = initial_params(w0, s0, prunable=is_prunable)
    state = tx.init(theta0)
    u, state = tx.update(jax.tree.map(jnp.zeros_like, theta0), state, theta0)
    new = optax.apply_updates(theta0, u)
    shrink = 1 - lr * lam
    chex.assert_trees_all_close(state.latent["fc0"]["kernel"],
                                w0["fc0"]["kernel"] * shrink**2, rtol=1e-5, atol=1e-6)
    assert float(state.s["fc0"]["kernel"]) == pytest.approx(s0 * shrink, rel=1e-6)
    chex.assert_trees_all_close(new["fc0"]["bias"], w0["fc0"]["bias"] * shrink, rtol=1e-6)
    chex.assert_trees_all_close(new["head"]["kernel"], w0["head"]["kernel"] * shrink**2,
                                rtol=1e-5, atol=1e-6)


def test_experiment_str_arms_place_the_decay_once(params):
    """``experiments.sign_in.str_tx`` (the STR ± Sign-In arms): one momentum step from zero
    state with a zero loss gradient moves every leaf by its decay exactly once."""
    from signticket.experiments import sign_in as si
    from signticket.experiments.configs.sign_in_cpu_str import get_config

    config = get_config()
    for arm, w_shrink in (("str", 1), ("str_sign_in", 2)):
        cfg = si.arm_config(config, arm, seed=0, sparsity=0.9)
        lr, lam = cfg.optimizer.learning_rate, cfg.method.str_weight_decay
        tx = si.make_tx(cfg, steps_per_epoch=32, latent=params)
        theta0 = initial_params(params, cfg.method.str_s_init, prunable=is_prunable)
        state = tx.init(theta0)
        u, state = tx.update(jax.tree.map(jnp.zeros_like, theta0), state, theta0)
        new = optax.apply_updates(theta0, u)
        shrink = 1 - lr * lam
        chex.assert_trees_all_close(state.latent["conv1"]["kernel"],
                                    params["conv1"]["kernel"] * shrink**w_shrink, rtol=1e-5)
        assert float(state.s["conv1"]["kernel"]) == pytest.approx(
            cfg.method.str_s_init * shrink, rel=1e-6)
        chex.assert_trees_all_close(new["bn0"]["scale"], params["bn0"]["scale"] * shrink,
                                    rtol=1e-6)
        chex.assert_trees_all_close(new["head"]["kernel"],
                                    params["head"]["kernel"] * shrink**w_shrink, rtol=1e-5)


def test_str_settings_do_not_rename_the_other_arms_runs():
    """The STR keys in the method config are dropped from every other arm's run config, so a
    config that carries them names the same RiGL / AC/DC / random runs as one without."""
    from signticket.checkpoint import run_identity
    from signticket.experiments import sign_in as si
    from signticket.experiments.configs.sign_in_cpu_dst import get_config as dst
    from signticket.experiments.configs.sign_in_cpu_str import get_config as str_config

    for arm in ("rigl", "acdc_sign_in", "random"):
        a = run_identity(si.arm_config(str_config(), arm, 0, 0.9))
        b = run_identity(si.arm_config(dst(), arm, 0, 0.9))
        assert a == b and "str" not in a["method"]
    got = run_identity(si.arm_config(str_config(), "str_sign_in", 0, 0.9))["method"]
    assert got["str"] and got["sign_in"] and got["str_weight_decay"] > 0


@pytest.mark.parametrize("kind", ["sgd", "sign_in"])
def test_weight_decay_grows_sparsity_and_theta_is_the_soft_threshold(kind):
    latent = make_params()
    params = initial_params(latent, -4.0, prunable=is_prunable)
    inner = (optax.sgd(0.05, momentum=0.9) if kind == "sgd"
             else sign_in(optax.sgd(0.05, momentum=0.9), reset_every=5))
    tx = str_sparsity(inner, s_init=-4.0, weight_decay=0.5, prunable=is_prunable,
                      latent=latent)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        # decay alone (zero loss gradient): it shrinks W and raises the thresholds g(s)
        u, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        return optax.apply_updates(params, u), state

    first = sparsity(state)[0]
    for _ in range(40):
        params, state = step(params, state)
    assert sparsity(state)[0] > first + 0.1
    chex.assert_trees_all_close(
        params["conv1"]["kernel"],
        soft_threshold(state.latent["conv1"]["kernel"], state.s["conv1"]["kernel"]), atol=1e-5)
    assert state.latent["head"]["kernel"] is None  # outside the given scope: plain
