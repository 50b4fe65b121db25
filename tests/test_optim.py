import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import make_params

from signticket import masks, optim


def _loss(params, x):
    h = x @ params["fc0"]["kernel"] + params["fc0"]["bias"]
    return jnp.sum(jnp.tanh(h) @ params["head"]["kernel"]) + sum(
        jnp.sum(p**2) for p in jax.tree.leaves(params)
    )


def _all_zero_where_pruned(params, mask):
    return all(
        bool(jnp.all(jnp.where(m, True, p == 0)))
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True)
    )


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero(inner):
    params = make_params()
    mask = masks.random_mask(jax.random.PRNGKey(0), params, 0.7)
    params = masks.apply_mask(params, mask)
    base = (
        optim.sgd(0.1, momentum=0.9, weight_decay=5e-4)
        if inner == "sgd"
        else optim.adam(1e-2, weight_decay=1e-4)
    )
    tx = optim.masked(base, mask)
    state = tx.init(params)
    x = jnp.ones((4, 8))

    @jax.jit
    def step(params, state):
        g = jax.grad(_loss)(params, x)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    start = params
    for _ in range(20):
        params, state = step(params, state)
    assert _all_zero_where_pruned(params, mask)
    # and the unmasked weights did move
    assert not bool(jnp.allclose(params["fc0"]["kernel"], start["fc0"]["kernel"]))


def test_mask_change_no_recompile_and_momentum_reset():
    params = make_params()
    tx = optim.masked(optim.sgd(0.1, momentum=0.9, weight_decay=5e-4))  # dense to start
    state = tx.init(params)
    x = jnp.ones((4, 8))
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)  # runs only while tracing
        g = jax.grad(_loss)(params, x)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    for _ in range(5):
        params, state = step(params, state)
    mask = masks.magnitude_prune(params, optim.get_mask(state), 0.5)
    params = masks.apply_mask(params, mask)
    state = optim.set_mask(state, mask)
    # momentum of newly pruned entries is reset
    trace = state.inner_state[1][0].trace
    assert _all_zero_where_pruned(trace, mask)
    for _ in range(20):
        params, state = step(params, state)
    assert len(traces) == 1, "changing the mask recompiled the step"
    assert _all_zero_where_pruned(params, mask)


def test_composes_with_chain_and_multisteps():
    params = make_params()
    mask = masks.random_mask(jax.random.PRNGKey(0), params, 0.5)
    params = masks.apply_mask(params, mask)
    tx = optax.MultiSteps(
        optax.chain(optax.clip_by_global_norm(1.0), optim.masked(optax.sgd(0.1, 0.9), mask)), 2
    )
    state = tx.init(params)
    for _ in range(4):
        g = jax.grad(_loss)(params, jnp.ones((4, 8)))
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    assert _all_zero_where_pruned(params, mask)
    new_mask = masks.magnitude_prune(params, mask, 0.5)
    state = optim.set_mask(state, new_mask)
    chex.assert_trees_all_equal(optim.get_mask(state), new_mask)


def test_sgd_matches_pytorch_formula():
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.5])}
    tx = optim.sgd(0.1, momentum=0.9, weight_decay=0.01)
    s = tx.init(p)
    u1, s = tx.update(g, s, p)
    buf = g["w"] + 0.01 * p["w"]
    chex.assert_trees_all_close(u1["w"], -0.1 * buf)
    p2 = optax.apply_updates(p, u1)
    u2, s = tx.update(g, s, p2)
    buf = 0.9 * buf + g["w"] + 0.01 * p2["w"]
    chex.assert_trees_all_close(u2["w"], -0.1 * buf, rtol=1e-6)


def test_bad_input():
    params = make_params()
    mask = masks.full_mask(params)
    mask.pop("head")
    with pytest.raises(ValueError, match="structures differ"):
        optim.masked(optax.sgd(0.1), mask).init(params)
    with pytest.raises(ValueError, match="no MaskedState"):
        optim.set_mask(optax.sgd(0.1).init(params), masks.full_mask(params))
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer("lion", 0.1)
