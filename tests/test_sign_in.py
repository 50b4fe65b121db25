"""Sign-In: the m * w reparameterisation as an optax transform, resets, masks, checkpoints."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_params

from signticket import masks, optim
from signticket.checkpoint import Checkpointer
from signticket.sign_in import MW, SignInState, balanced_init, reparameterized, sign_in


def _loss(params, x):
    h = x @ params["fc0"]["kernel"] + params["fc0"]["bias"]
    out = jnp.tanh(h) @ params["head"]["kernel"] + params["head"]["bias"]
    conv = sum(jnp.sum(jnp.sin(p)) for p in jax.tree.leaves(params))
    return jnp.sum(out**2) / 100.0 + conv


X = jnp.linspace(-1.0, 1.0, 32).reshape(4, 8)


def _run(tx, params, steps, jit=False):
    state = tx.init(params)

    def step(params, state):
        g = jax.grad(_loss)(params, X)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    step = jax.jit(step) if jit else step
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def _balance(state: SignInState):
    """Mean of m^2 - w^2 over the (unmasked) reparameterised entries."""
    total, count = 0.0, 0
    treedef = jax.tree.structure(state.mask)
    for mk, m, w in zip(jax.tree.leaves(state.mask), treedef.flatten_up_to(state.m),
                        treedef.flatten_up_to(state.w), strict=True):
        if m is None:
            continue
        total += float(jnp.sum(jnp.where(mk, m * m - w * w, 0.0)))
        count += int(jnp.sum(mk))
    return total / count


# -- the init / reset formula ---------------------------------------------------------------------


@pytest.mark.parametrize("c", [1.0, 0.1, 1e-3, 10.0])
def test_balanced_init_gives_theta_and_balance(c):
    theta = jax.random.normal(jax.random.PRNGKey(0), (1000,)) * 3
    theta = theta.at[:4].set(jnp.array([0.0, -0.0, -1e-8, -7.0]))
    with jax.enable_x64(True):
        t64 = jnp.asarray(np.asarray(theta), jnp.float64)
        m, w = balanced_init(t64, c)
        chex.assert_trees_all_close(m * w, t64, atol=1e-6, rtol=0)
        chex.assert_trees_all_close(m * m - w * w, jnp.full_like(t64, c), atol=1e-6, rtol=0)
    m, w = balanced_init(theta, c)  # float32: same identities to float32 precision
    assert m.dtype == jnp.float32 and bool(jnp.all(m > 0))
    chex.assert_trees_all_close(m * w, theta, atol=1e-6, rtol=1e-6)
    scale = jnp.maximum(m * m, 1.0)
    assert float(jnp.max(jnp.abs(m * m - w * w - c) / scale)) < 1e-6
    # theta = 0 -> (sqrt(c), 0)
    assert float(m[0]) == pytest.approx(np.sqrt(c), rel=1e-6) and float(w[0]) == 0.0


def test_init_state_matches_params_and_reparameterises_kernels_only(params):
    state = sign_in(optax.sgd(0.1), reset_every=None).init(params)
    m, w = reparameterized(state)
    assert m["bn0"]["scale"] is None and m["fc0"]["bias"] is None
    for path in (("conv0", "kernel"), ("fc0", "kernel"), ("head", "kernel")):
        mi, wi = m[path[0]][path[1]], w[path[0]][path[1]]
        chex.assert_trees_all_close(mi * wi, params[path[0]][path[1]], atol=1e-6)
    assert _balance(state) == pytest.approx(1.0, abs=1e-5)


# -- the update -----------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1e-8, 0.5])
def test_first_step_matches_analytic_mw_gradient_step(params, c):
    """One SGD step on (m, w) from the balanced init moves theta by
    -lr g (m^2 + w^2) + lr^2 g^2 theta, with m^2 + w^2 = sqrt(c^2 + 4 theta^2)."""
    lr = 0.05
    tx = sign_in(optax.sgd(lr), reset_every=None, c=c)
    new, _ = _run(tx, params, 1)
    g = jax.grad(_loss)(params, X)

    def analytic(p, gi, kernel):
        if not kernel:
            return p - lr * gi
        return p - lr * gi * jnp.sqrt(c * c + 4 * p * p) + lr * lr * gi * gi * p

    kernels = jax.tree_util.tree_map_with_path(lambda k, _: k[-1].key == "kernel", params)
    expected = jax.tree.map(analytic, params, g, kernels)
    chex.assert_trees_all_close(new, expected, atol=2e-6, rtol=1e-5)


def test_updates_land_exactly_on_m_times_w(params):
    tx = sign_in(optax.sgd(0.05, momentum=0.9), reset_every=3, weight_decay=1e-3)
    new, state = _run(tx, params, 7)
    m, w = reparameterized(state)
    for name in ("conv0", "conv1", "fc0", "head"):
        chex.assert_trees_all_close(new[name]["kernel"], m[name]["kernel"] * w[name]["kernel"],
                                    atol=1e-6, rtol=1e-6)


def test_plain_leaves_get_inner_update_with_coupled_decay(params):
    lr, lam = 0.1, 0.01
    tx = sign_in(optax.sgd(lr), reset_every=None, weight_decay=lam)
    new, _ = _run(tx, params, 1)
    g = jax.grad(_loss)(params, X)
    for name, leaf in (("bn0", "scale"), ("fc0", "bias"), ("head", "bias")):
        expected = params[name][leaf] - lr * (g[name][leaf] + lam * params[name][leaf])
        chex.assert_trees_all_close(new[name][leaf], expected, atol=1e-6)


def test_mw_weight_decay_shrinks_theta_and_balance_by_the_documented_factor(params):
    """With zero loss gradient, decay λ on m and w multiplies theta and m^2 - w^2 by
    (1 - lr λ)^2 per step: an effective theta decay of about 2 λ."""
    lr, lam = 0.1, 0.2
    tx = sign_in(optax.sgd(lr), reset_every=None, mw_weight_decay=lam)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    u, state = tx.update(zeros, state, params)
    new = optax.apply_updates(params, u)
    f = (1 - lr * lam) ** 2
    chex.assert_trees_all_close(new["conv1"]["kernel"], f * params["conv1"]["kernel"], atol=1e-6)
    assert _balance(state) == pytest.approx(f, rel=1e-5)
    chex.assert_trees_all_close(new["fc0"]["bias"], params["fc0"]["bias"])  # weight_decay=0


def test_gradient_flow_nearly_conserves_balance_without_decay(params):
    tx = sign_in(optax.sgd(1e-3), reset_every=None)
    _, state = _run(tx, params, 50)
    assert _balance(state) == pytest.approx(1.0, abs=1e-4)


def test_reset_restores_balance_and_leaves_theta_unchanged(params):
    base = optax.sgd(0.05, momentum=0.9)
    kw = {"weight_decay": 0.05}
    p_none, s_none = _run(sign_in(base, reset_every=None, **kw), params, 4)
    p_reset, s_reset = _run(sign_in(base, reset_every=4, **kw), params, 4)
    assert _balance(s_none) < 0.999  # decay and noise shrank it
    assert _balance(s_reset) == pytest.approx(1.0, abs=1e-5)
    chex.assert_trees_all_close(p_reset, p_none, atol=1e-6, rtol=1e-6)
    # ... and then the two trajectories differ (the reset changes the dynamics, not theta)
    p5_none, _ = _run(sign_in(base, reset_every=None, **kw), params, 5)
    p5_reset, _ = _run(sign_in(base, reset_every=4, **kw), params, 5)
    assert not bool(jnp.allclose(p5_none["conv1"]["kernel"], p5_reset["conv1"]["kernel"]))


@pytest.mark.parametrize("reset_momentum", [True, False])
def test_reset_momentum_option(params, reset_momentum):
    tx = sign_in(optax.sgd(0.05, momentum=0.9), reset_every=2, reset_momentum=reset_momentum)
    _, state = _run(tx, params, 2)
    trace = state.inner_state[0].trace
    mw_trace = trace["conv1"]["kernel"]
    assert isinstance(mw_trace, MW)
    assert bool(jnp.all(mw_trace.m == 0)) == reset_momentum
    assert bool(jnp.all(mw_trace.w == 0)) == reset_momentum
    assert not bool(jnp.all(trace["fc0"]["bias"] == 0))  # plain leaves keep their momentum


def test_reset_scaling_helper_finds_nested_state(params):
    tx = optax.chain(optax.clip_by_global_norm(10.0),
                     sign_in(optax.sgd(0.05), reset_every=None, mw_weight_decay=0.1))
    p, state = _run(tx, params, 3)
    assert _balance(state[1]) < 0.99
    state = optim.reset_scaling(state)
    assert _balance(state[1]) == pytest.approx(1.0, abs=1e-5)
    m, w = reparameterized(state)
    chex.assert_trees_all_close(m["conv1"]["kernel"] * w["conv1"]["kernel"], p["conv1"]["kernel"],
                                atol=1e-6, rtol=1e-6)


# -- masks ---------------------------------------------------------------------------------------


def test_masked_entries_stay_exactly_zero(params):
    mask = masks.random_mask(jax.random.PRNGKey(1), params, 0.7)
    tx = sign_in(optax.sgd(0.05, momentum=0.9), mask, reset_every=3, weight_decay=5e-4)
    # params deliberately NOT masked: the first update must zero the pruned entries anyway
    new, state = _run(tx, params, 6)
    for p, mk, p0 in zip(jax.tree.leaves(new), jax.tree.leaves(mask), jax.tree.leaves(params),
                         strict=True):
        assert bool(jnp.all(jnp.where(mk, True, p == 0)))
        if not bool(jnp.all(mk)):
            assert not bool(jnp.allclose(jnp.where(mk, p, 0), jnp.where(mk, p0, 0)))
    m, w = reparameterized(state)
    km, kw, kmask = m["conv1"]["kernel"], w["conv1"]["kernel"], mask["conv1"]["kernel"]
    assert bool(jnp.all(jnp.where(kmask, True, (km == 1.0) & (kw == 0.0))))


def test_set_mask_regrows_at_theta_zero_and_does_not_recompile(params):
    mask = masks.random_mask(jax.random.PRNGKey(1), params, 0.5)
    params = masks.apply_mask(params, mask)
    tx = sign_in(optax.sgd(0.05, momentum=0.9), mask, reset_every=None, c=0.5)
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)  # runs only while tracing
        g = jax.grad(_loss)(params, X)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    for _ in range(3):
        params, state = step(params, state)
    # drop the active half of conv1, grow the pruned half (a RiGL-like swap)
    new_mask = {**mask, "conv1": {"kernel": ~mask["conv1"]["kernel"]}}
    params = masks.apply_mask(params, new_mask)
    state = optim.set_mask(state, new_mask)
    assert optim.get_mask(state) is state.mask
    m, w = reparameterized(state)
    chex.assert_trees_all_close(m["conv1"]["kernel"],
                                jnp.full_like(m["conv1"]["kernel"], np.sqrt(0.5)))
    assert bool(jnp.all(w["conv1"]["kernel"] == 0))
    assert bool(jnp.all(state.inner_state[0].trace["conv1"]["kernel"].m == 0))
    params, state = step(params, state)
    grown = params["conv1"]["kernel"]
    assert bool(jnp.all(jnp.where(new_mask["conv1"]["kernel"], True, grown == 0)))
    assert float(jnp.mean(jnp.abs(grown) > 0)) > 0.4  # grown weights move off zero
    assert len(traces) == 1, "changing the mask recompiled the step"


def test_set_mask_still_handles_masked_state(params):
    state = optim.masked_updates(optim.sgd(0.1)).init(params)
    mask = masks.random_mask(jax.random.PRNGKey(0), params, 0.5)
    out = optim.set_mask(state, mask)
    assert isinstance(out, optim.MaskedState)
    chex.assert_trees_all_equal(out.mask, mask)


# -- composition ---------------------------------------------------------------------------------


class ComposeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_composes_with_chain_and_schedule(self):
        """lr 0.1 for one step, then 0: the schedule's count lives in the inner state."""
        params = make_params()
        sched = optax.piecewise_constant_schedule(0.1, {1: 0.0})
        tx = optax.chain(optax.clip_by_global_norm(1e6),
                         sign_in(optax.sgd(sched), reset_every=None))
        state = tx.init(params)

        @self.variant
        def step(params, state):
            g = jax.grad(_loss)(params, X)
            u, state = tx.update(g, state, params)
            return optax.apply_updates(params, u), state

        p1, state = step(params, state)
        p2, state = step(p1, state)
        assert not bool(jnp.allclose(p1["conv1"]["kernel"], params["conv1"]["kernel"]))
        chex.assert_trees_all_close(p2, p1, atol=1e-6)
        ref, _ = _run(sign_in(optax.sgd(0.1), reset_every=None), params, 1, jit=False)
        chex.assert_trees_all_close(p1, ref, atol=1e-6)


def test_works_inside_multisteps(params):
    tx = optax.MultiSteps(sign_in(optax.sgd(0.05), reset_every=2), every_k_schedule=2)
    p, state = _run(tx, params, 4, jit=True)
    inner = state.inner_opt_state
    assert int(inner.step) == 2  # two real updates, the second one a reset
    assert _balance(inner) == pytest.approx(1.0, abs=1e-5)
    assert not bool(jnp.allclose(p["conv1"]["kernel"], params["conv1"]["kernel"]))


def test_checkpoint_resume_of_mw_state(params, tmp_path):
    tx = sign_in(optax.sgd(0.05, momentum=0.9), reset_every=4, weight_decay=1e-3)
    full, full_state = _run(tx, params, 6)

    half, half_state = _run(tx, params, 3)
    ckpt = Checkpointer(tmp_path / "run")
    ckpt.save(3, {"params": half, "opt_state": half_state})
    ckpt.close()
    template = {"params": params, "opt_state": tx.init(params)}
    step, restored = Checkpointer(tmp_path / "run").restore(template)
    assert step == 3 and int(restored["opt_state"].step) == 3
    chex.assert_trees_all_equal(restored["opt_state"], half_state)

    @jax.jit
    def one(params, state):
        u, state = tx.update(jax.grad(_loss)(params, X), state, params)
        return optax.apply_updates(params, u), state

    p, s = restored["params"], restored["opt_state"]
    for _ in range(3):
        p, s = one(p, s)
    chex.assert_trees_all_close(p, full, atol=1e-6)
    chex.assert_trees_all_close(s, full_state, atol=1e-6)


# -- bad input -----------------------------------------------------------------------------------


def test_bad_mask_structure(params):
    mask = masks.full_mask(params)
    del mask["conv1"]
    with pytest.raises(ValueError, match="only in params"):
        sign_in(optax.sgd(0.1), mask, reset_every=None).init(params)


@pytest.mark.parametrize("c", [0.0, -1.0, float("nan")])
def test_bad_c(c):
    with pytest.raises(ValueError, match=r"c \(the balance .*\) must be > 0"):
        sign_in(optax.sgd(0.1), reset_every=None, c=c)


@pytest.mark.parametrize("period", [0, -3, 2.5, True])
def test_bad_reset_period(period):
    with pytest.raises(ValueError, match="reset_every must be a positive"):
        sign_in(optax.sgd(0.1), reset_every=period)


def test_reset_period_is_required():
    with pytest.raises(TypeError, match="reset_every"):
        sign_in(optax.sgd(0.1))


def test_inner_must_be_a_gradient_transformation():
    with pytest.raises(TypeError, match="GradientTransformation"):
        sign_in(0.1, reset_every=None)


def test_non_differentiable_inner_state(params):
    bad = optax.GradientTransformation(lambda p: {"note": "not an array"},
                                       lambda u, s, p=None: (u, s))
    with pytest.raises(TypeError, match="non-array leaf at 'note'"):
        sign_in(bad, reset_every=None).init(params)


def test_non_float_reparameterised_leaf():
    params = {"fc": {"kernel": jnp.ones((2, 2), jnp.int32)}}
    with pytest.raises(TypeError, match="non-differentiable leaf 'fc/kernel'"):
        sign_in(optax.sgd(0.1), reset_every=None).init(params)


def test_update_without_params(params):
    tx = sign_in(optax.sgd(0.1), reset_every=None)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))


def test_set_mask_without_any_masked_state(params):
    with pytest.raises(ValueError, match="no MaskedState or SignInState"):
        optim.set_mask(optax.sgd(0.1).init(params), masks.full_mask(params))


def test_make_params_fixture_is_shared():
    # guard: the tests above rely on conftest's tree having convs, BN, biases and a head
    assert {"conv0", "bn0", "fc0", "head"} <= set(make_params())


# -- sign-flip and balance metrics ---------------------------------------------------------------


def test_flip_tracker_counts_epoch_to_epoch_changes_over_unmasked_entries():
    from signticket.sign_metrics import cumulative_flips, flip_tracker, track_flips

    p0 = {"conv": {"kernel": jnp.array([1.0, -1.0, 2.0, 0.5])}, "bn": {"scale": jnp.ones(2)}}
    p1 = {"conv": {"kernel": jnp.array([-1.0, -1.0, -2.0, -0.5])}, "bn": {"scale": -jnp.ones(2)}}
    p2 = {"conv": {"kernel": jnp.array([1.0, 1.0, -2.0, 0.5])}, "bn": {"scale": -jnp.ones(2)}}
    mask = {"conv": {"kernel": jnp.array([True, True, True, False])},
            "bn": {"scale": jnp.ones(2, bool)}}
    t = track_flips(track_flips(flip_tracker(p0), p1, mask), p2, mask)
    assert int(t.changes["conv"]["kernel"]) == 4  # entry 0 flips twice, 1 and 2 once; 3 masked
    # leaving exactly 0 (a regrown weight) is not a sign flip
    z = {"conv": {"kernel": jnp.array([0.0, 0.0, 1.0, 1.0])}, "bn": {"scale": jnp.ones(2)}}
    z1 = {"conv": {"kernel": jnp.array([-1.0, 1.0, 0.0, -1.0])}, "bn": {"scale": jnp.ones(2)}}
    assert int(track_flips(flip_tracker(z), z1).changes["conv"]["kernel"]) == 1
    stats = cumulative_flips(t, mask)
    assert set(stats.per_layer) == {"conv/kernel"}  # BN is not a prunable layer
    assert float(stats.per_layer["conv/kernel"]) == pytest.approx(4 / 3)
    # the tracker is a pytree: jit-able and storable in TrainState.hook_state
    t2 = jax.jit(track_flips)(flip_tracker(p0), p1, mask)
    chex.assert_trees_all_equal(t2.changes["conv"]["kernel"], jnp.asarray(2, jnp.int32))


def test_balance_per_layer_tracks_decay_and_ignores_masked_entries(params):
    from signticket.sign_metrics import balance_per_layer

    mask = masks.random_mask(jax.random.PRNGKey(0), params, 0.5)
    lr, lam = 0.1, 0.2
    tx = sign_in(optax.sgd(lr), mask, reset_every=None, c=2.0, mw_weight_decay=lam)
    state = tx.init(params)
    stats = balance_per_layer(state)
    assert set(stats.per_layer) == {"conv0/kernel", "conv1/kernel", "stage0_block0/conv1/kernel",
                                    "fc0/kernel"}
    assert float(stats.overall) == pytest.approx(2.0, rel=1e-5)
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    stats = balance_per_layer(state)
    for v in stats.per_layer.values():  # masked entries sit at (sqrt(c), 0) and do not decay
        assert float(v) == pytest.approx(2.0 * (1 - lr * lam) ** 2, rel=1e-5)


# -- the paper's recipe, pinned (docs/protocols/sign_in.md) ---------------------------------------


@pytest.mark.parametrize("c", [1.0, 0.05, lambda name, x: 0.3 if "head" in name else 2.0])
def test_first_order_update_is_the_preconditioned_gradient(params, c):
    """Paper, Sec. 4 (Sign-In): gradient flow on (m, w) is d theta = -sqrt(4 theta^2 + beta^2)
    grad L dt. One small SGD step must match it to first order in lr, per leaf's beta."""
    from signticket.sign_in import preconditioner

    lr = 1e-5
    with jax.enable_x64(True):  # u = m'w' - theta cancels: float64 keeps the O(lr^2) visible
        params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), params)
        tx = sign_in(optax.sgd(lr), reset_every=None, c=c)
        state = tx.init(params)
        g = jax.grad(_loss)(params, jnp.asarray(np.asarray(X), jnp.float64))
        u, _ = tx.update(g, state, params)
        for name in ("conv0", "conv1", "fc0", "head"):
            theta, gi = params[name]["kernel"], g[name]["kernel"]
            beta = state.c[name]["kernel"]  # float32 scalar: compare against the same value
            m, w = balanced_init(theta, beta)
            expected = -lr * preconditioner(theta, m * m - w * w) * gi
            # the second-order term is lr^2 g^2 theta: relative error O(lr |g|)
            chex.assert_trees_all_close(u[name]["kernel"], expected, rtol=1e-4, atol=1e-12)
            chex.assert_trees_all_close(m * m - w * w, jnp.full_like(m, beta), rtol=1e-6)
        assert state.c["fc0"]["bias"] is None


def test_reset_sets_each_leafs_beta_and_keeps_theta_and_momentum(params):
    """Paper: 'every p epochs beta is reset to 1 without changing theta' (closed form). The
    default keeps the optimizer's buffers (the paper describes no momentum reset)."""
    per_leaf = lambda name, x: 0.5 if "head" in name else 1.0
    kw = {"weight_decay": 0.05, "c": per_leaf}
    base = optax.sgd(0.05, momentum=0.9)
    p_none, s_none = _run(sign_in(base, reset_every=None, **kw), params, 3)
    p_reset, s_reset = _run(sign_in(base, reset_every=3, **kw), params, 3)
    chex.assert_trees_all_close(p_reset, p_none, atol=1e-6, rtol=1e-6)
    m, w = reparameterized(s_reset)
    for name, beta in (("conv1", 1.0), ("head", 0.5)):
        bal = m[name]["kernel"] ** 2 - w[name]["kernel"] ** 2
        chex.assert_trees_all_close(bal, jnp.full_like(bal, beta), atol=1e-5)
        m0, w0 = reparameterized(s_none)
        assert float(jnp.max(jnp.abs(m0[name]["kernel"] ** 2 - w0[name]["kernel"] ** 2
                                     - beta))) > 1e-3  # without the reset it had drifted
    trace = s_reset.inner_state[0].trace["conv1"]["kernel"]
    assert not bool(jnp.all(trace.m == 0))  # momentum kept by default


def test_relative_balance_scales_with_the_layer(params):
    from signticket.sign_in import relative_balance

    state = sign_in(optax.sgd(0.1), reset_every=None, c=relative_balance(0.5)).init(params)
    for name in ("conv1", "head"):
        x = params[name]["kernel"]
        rms = float(jnp.sqrt(jnp.mean(x * x)))
        assert float(state.c[name]["kernel"]) == pytest.approx(0.5 * rms, rel=1e-5)
        m, w = reparameterized(state)
        chex.assert_trees_all_close(m[name]["kernel"] * w[name]["kernel"], x, atol=1e-6)


def test_bad_per_leaf_c(params):
    with pytest.raises(ValueError, match="must be > 0"):
        sign_in(optax.sgd(0.1), reset_every=None, c=lambda n, x: -1.0).init(params)


def test_normalize_makes_the_step_at_zero_the_plain_step(params):
    """normalize=True (an experiment knob, not the paper's): theta moves by
    -lr sqrt(1 + 4 theta^2 / c^2) g to first order, whatever c."""
    lr, c = 1e-5, 0.05
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), params)
        tx = sign_in(optax.sgd(lr), reset_every=None, c=c, normalize=True)
        state = tx.init(params)
        g = jax.grad(_loss)(params, jnp.asarray(np.asarray(X), jnp.float64))
        u, _ = tx.update(g, state, params)
        theta, gi = params["conv1"]["kernel"], g["conv1"]["kernel"]
        beta = jnp.asarray(state.c["conv1"]["kernel"], jnp.float64)
        chex.assert_trees_all_close(u["conv1"]["kernel"],
                                    -lr * jnp.sqrt(1 + 4 * theta**2 / beta**2) * gi, rtol=1e-3)
        chex.assert_trees_all_close(u["fc0"]["bias"], -lr * g["fc0"]["bias"], rtol=1e-9)
