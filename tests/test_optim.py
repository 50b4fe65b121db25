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
    tx = optim.masked_updates(base, mask)
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
    tx = optim.masked_updates(optim.sgd(0.1, momentum=0.9, weight_decay=5e-4))  # dense to start
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
    # with tx: the momentum of newly pruned entries is zeroed now (tree_map_params) ...
    eager = optim.set_mask(state, mask, tx)
    assert _all_zero_where_pruned(eager.inner_state[1][0].trace, mask)
    # ... without it, at the next update; either way training is the same
    state = optim.set_mask(state, mask)
    chex.assert_trees_all_equal(optim.get_mask(state), mask)
    p1, s1 = step(params, state)
    p2, s2 = step(params, eager)
    chex.assert_trees_all_close(p1, p2)
    chex.assert_trees_all_close(s1, s2)
    assert _all_zero_where_pruned(s1.inner_state[1][0].trace, mask)
    for _ in range(20):
        params, state = step(params, state)
    assert len(traces) == 1, "changing the mask recompiled the step"
    assert _all_zero_where_pruned(params, mask)


def test_composes_with_chain_and_multisteps():
    params = make_params()
    mask = masks.random_mask(jax.random.PRNGKey(0), params, 0.5)
    params = masks.apply_mask(params, mask)
    tx = optax.MultiSteps(
        optax.chain(optax.clip_by_global_norm(1.0),
                    optim.masked_updates(optax.sgd(0.1, 0.9), mask)), 2
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
        optim.masked_updates(optax.sgd(0.1), mask).init(params)
    with pytest.raises(ValueError, match="no MaskedState"):
        optim.set_mask(optax.sgd(0.1).init(params), masks.full_mask(params))
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer("lion", 0.1)


def test_init_works_with_tree_map_params_placeholders():
    """optax.tree_utils.tree_map_params calls init on a placeholder: masked_updates (with or
    without a given mask) and sign_in report their mask field (and masked_updates its inner
    momentum) as params-shaped, so sharding specs / surgery map over exactly those."""
    params = make_params()
    mask = masks.random_mask(jax.random.PRNGKey(0), params, 0.5)
    for tx in (optim.masked_updates(optim.sgd(0.1, momentum=0.9), mask),
               optim.masked_updates(optim.sgd(0.1, momentum=0.9)),
               optax.chain(optax.clip(1.0), optim.masked_updates(optax.sgd(0.1, 0.9), mask))):
        state = tx.init(params)
        names = optax.tree_utils.tree_map_params(tx, lambda x: "P", state,
                                                 transform_non_params=lambda x: "-")
        labels = set(jax.tree.leaves(names))
        assert labels == {"P", "-"} or labels == {"P"}
        assert set(jax.tree.leaves(optax.tree_utils.tree_get(names, "mask"))) == {"P"}
    tx = optim.sign_in(optax.sgd(0.1, momentum=0.9), mask, reset_every=None)
    names = optax.tree_utils.tree_map_params(tx, lambda x: "P", tx.init(params),
                                             transform_non_params=lambda x: "-")
    assert set(jax.tree.leaves(names.mask)) == {"P"}
    assert set(jax.tree.leaves(names.inner_state)) == {"-"}


def test_no_import_cycle_and_deprecated_alias():
    import subprocess
    import sys

    code = ("import signticket.optim as o; assert 'signticket.sign_in' not in __import__('sys')"
            ".modules; import signticket.sign_in as s; assert s.set_mask is o.set_mask; "
            "assert o.sign_in is s.sign_in and o.masked is o.masked_updates")
    subprocess.run([sys.executable, "-c", code], check=True)
