"""Dense-to-sparse / dynamic sparse methods as optax transforms: RiGL per step and AC/DC, with
plain masked SGD and with Sign-In (signticket.dst, .rigl, .acdc)."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import TOY_X, make_params, toy_mlp_loss

from signticket import masks, optim
from signticket.acdc import acdc, acdc_phases, magnitude_mask
from signticket.dst import find
from signticket.rigl import drop_fraction, rigl, rigl_masks
from signticket.sign_in import reparameterized, sign_in

X = TOY_X
_loss = toy_mlp_loss


def _inner(kind, mask):
    if kind == "masked":
        return optim.masked_updates(optax.sgd(0.05, momentum=0.9), mask)
    return sign_in(optax.sgd(0.05, momentum=0.9), mask, reset_every=5)


def _density(mask):
    return {n: float(jnp.mean(m)) for n, m in masks.named_leaves(mask)}


@pytest.mark.parametrize("kind", ["masked", "sign_in"])
def test_rigl_per_step_matches_rule_keeps_density_and_zeroes_pruned(kind):
    params = make_params()
    mask = masks.random_mask(jax.random.PRNGKey(1), params, 0.6, "erk")
    params = masks.apply_mask(params, mask)
    tx = rigl(_inner(kind, mask), delta_t=2, end_step=9, alpha=0.4)
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        g = jax.grad(_loss)(params, X)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state, g

    changed = []
    for t in range(12):
        before = optim.get_mask(state)
        p_before = params
        params, state, g = step(params, state)
        after = optim.get_mask(state)
        changed.append(not all(bool(jnp.all(a == b)) for a, b in
                               zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)))
        if t in (2, 4):  # an update step: the mask is RiGL's rule on this batch's dense grads
            _, expected = rigl_masks(p_before, g, before, drop_fraction(t, 9, 0.4))
            chex.assert_trees_all_equal(after, expected)
        assert _density(after) == _density(mask)  # every layer keeps its density
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(after), strict=True):
            assert bool(jnp.all(jnp.where(m, True, p == 0)))
    assert changed == [t in (2, 4, 6, 8) for t in range(12)]
    assert int(find(state).count) == 12
    assert len(traces) == 1, "a mask update recompiled the step"
    if kind == "sign_in":  # theta is m * w on the kept entries, (sqrt(beta), 0) elsewhere
        m, w = reparameterized(find(state).inner_state)
        k = optim.get_mask(state)["conv1"]["kernel"]
        chex.assert_trees_all_close(m["conv1"]["kernel"] * w["conv1"]["kernel"],
                                    params["conv1"]["kernel"], atol=1e-6)
        assert bool(jnp.all(jnp.where(k, True, w["conv1"]["kernel"] == 0)))


def test_acdc_phases_follow_the_paper_plan():
    f = acdc_phases(100)
    assert f[:10] == (False,) * 10 and f[10:15] == (True,) * 5 and f[15:20] == (False,) * 5
    assert f[-10:] == (True,) * 10 and len(f) == 100
    assert acdc_phases(6) == (False, True, False, True, False, True)


@pytest.mark.parametrize("kind", ["masked", "sign_in"])
def test_acdc_alternates_dense_and_exactly_sparse(kind):
    params = make_params()
    spe = 3
    tx = acdc(_inner(kind, None), sparsity=0.7, steps_per_epoch=spe,
              sparse_epochs=(False, True, False, True), scope="layerwise")
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        u, state = tx.update(jax.grad(_loss)(params, X), state, params)
        return optax.apply_updates(params, u), state

    for epoch in range(5):
        for i in range(spe):
            p_before = params
            params, state = step(params, state)
            mask = optim.get_mask(state)
            sp = masks.sparsity(mask)
            if epoch in (1, 3, 4):  # compressed (epoch 4: past the plan, stays compressed)
                assert float(sp.overall) == pytest.approx(0.7, abs=0.01)
                for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True):
                    assert bool(jnp.all(jnp.where(m, True, p == 0)))
                if i == 0 and epoch in (1, 3):  # pruned by magnitude at the phase's first step
                    chex.assert_trees_all_equal(
                        mask, magnitude_mask(p_before, 0.7, "layerwise"))
            else:
                assert float(sp.overall) == 0.0
    # the decompressed epoch regrew the pruned weights from 0
    assert float(jnp.mean(params["conv1"]["kernel"] != 0)) == pytest.approx(0.3, abs=0.02)


def test_bad_arguments():
    with pytest.raises(ValueError, match="delta_t"):
        rigl(optim.masked_updates(optax.sgd(0.1)), delta_t=0, end_step=10)
    with pytest.raises(ValueError, match="sparsity"):
        acdc(optim.masked_updates(optax.sgd(0.1)), sparsity=1.0, steps_per_epoch=1,
             sparse_epochs=(True,))


@pytest.mark.parametrize("kind", ["masked", "sign_in"])
def test_a_weight_dropped_and_regrown_restarts_at_zero_plus_one_step(kind):
    """RiGL here: a weight dropped and regrown in one update restarts like any grown one:
    theta = 0 + its first step from fresh optimizer state (not its old value)."""
    params = {"fc0": {"kernel": jnp.array([[3.0, 0.01, 2.0, 0.0]])},
              "head": {"kernel": jnp.ones((4, 1))}}
    mask = {"fc0": {"kernel": jnp.array([[True, True, True, False]])},
            "head": {"kernel": jnp.ones((4, 1), bool)}}

    def rule(t, p, g, m):  # drop entry 1, grow entries 1 (regrown) and 3 (new)
        mid = {**m, "fc0": {"kernel": jnp.array([[True, False, True, False]])}}
        new = {**m, "fc0": {"kernel": jnp.array([[True, True, True, True]])}}
        return mid, new

    from signticket.dst import mask_updater

    lr = 0.1
    inner = (optim.masked_updates(optax.sgd(lr, momentum=0.9), mask) if kind == "masked"
             else sign_in(optax.sgd(lr, momentum=0.9), mask, reset_every=None))
    tx = mask_updater(inner, rule, lambda t: t == 1)
    state = tx.init(params)
    g = {"fc0": {"kernel": jnp.full((1, 4), 0.5)}, "head": {"kernel": jnp.zeros((4, 1))}}
    u, state = tx.update(g, state, params)  # t = 0: no change, momentum builds up
    params = optax.apply_updates(params, u)
    u, state = tx.update(g, state, params)  # t = 1: drop/regrow entry 1, grow entry 3
    new = optax.apply_updates(params, u)["fc0"]["kernel"][0]
    # from theta = 0 with fresh momentum: one step of -lr * g (Sign-In: preconditioner c = 1)
    assert float(new[1]) == pytest.approx(-lr * 0.5, rel=1e-5)
    assert float(new[3]) == pytest.approx(-lr * 0.5, rel=1e-5)
    assert float(new[0]) < float(params["fc0"]["kernel"][0, 0])  # kept entries keep moving
