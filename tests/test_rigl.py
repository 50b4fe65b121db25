"""RiGL prune-and-grow: exact drop/grow choices, density kept, state resets, engine hook."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_params

from signticket import masks, models, optim
from signticket.rigl import dense_grad_fn, drop_fraction, rigl_hook, rigl_update
from signticket.sign_in import reparameterized, sign_in
from signticket.tree import is_prunable, named_leaves


def _setup(tx, sparsity=0.5):
    params = make_params()
    mask = masks.random_mask(jax.random.PRNGKey(3), params, sparsity)
    params = masks.apply_mask(params, mask)
    state = optim.set_mask(tx.init(params), mask)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(7), p.shape), params)
    return params, mask, state, grads


def _expected(theta, grad, active, f):
    """Reference drop/grow with numpy sorting (one layer, flat)."""
    theta, grad, active = map(np.asarray, (theta.ravel(), grad.ravel(), active.ravel()))
    k = round(float(f) * int(active.sum()))
    act = np.flatnonzero(active)
    dropped = act[np.argsort(np.abs(theta[act]), kind="stable")[:k]]
    after = active.copy()
    after[dropped] = False
    cand = np.flatnonzero(~after)
    grown = cand[np.argsort(-np.abs(grad[cand]), kind="stable")[:k]]
    new = after.copy()
    new[grown] = True
    return after, new


@pytest.mark.parametrize("which", ["masked", "sign_in"])
def test_drops_smallest_grows_largest_and_keeps_density(which):
    base = optax.sgd(0.1, momentum=0.9)
    tx = optim.masked_updates(base) if which == "masked" else sign_in(base, reset_every=None)
    params, mask, state, grads = _setup(tx)
    out = rigl_update(params, grads, state, 0.3)
    for name, p in named_leaves(params):
        new = dict(named_leaves(out.mask))[name]
        old = dict(named_leaves(mask))[name]
        if not is_prunable(name):
            assert bool(jnp.all(new == old))
            continue
        g = dict(named_leaves(grads))[name]
        after, exp_new = _expected(p, g, old, 0.3)
        np.testing.assert_array_equal(np.asarray(new).ravel(), exp_new)
        assert int(jnp.sum(new)) == int(jnp.sum(old))  # density unchanged
        theta = np.asarray(dict(named_leaves(out.params))[name]).ravel()
        assert np.all(theta[~after] == 0)  # dropped and grown entries are exactly 0
        np.testing.assert_array_equal(theta[after], np.asarray(p).ravel()[after])
    chex.assert_trees_all_equal(optim.get_mask(out.opt_state), out.mask)


def test_sign_in_grown_weights_enter_at_sqrt_c_zero_and_then_train():
    c = 0.5
    tx = sign_in(optax.sgd(0.1, momentum=0.9), reset_every=None, c=c)
    params, mask, state, grads = _setup(tx)
    # take a few steps so momentum and (m, w) are non-trivial
    loss = lambda p: sum(jnp.sum(jnp.sin(x) * g) for x, g in
                         zip(jax.tree.leaves(p), jax.tree.leaves(grads), strict=True))
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        u, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, u), state

    for _ in range(3):
        params, state = step(params, state)
    m0, w0 = reparameterized(state)
    out = rigl_update(params, grads, state, 0.3)
    m, w = reparameterized(out.opt_state)
    old, new = mask["conv1"]["kernel"], out.mask["conv1"]["kernel"]
    after = np.asarray(out.params["conv1"]["kernel"] != 0) | ~np.asarray(new)
    fresh = np.asarray(new) & ~after  # grown (including dropped-and-regrown)
    assert fresh.sum() > 0
    mk, wk = np.asarray(m["conv1"]["kernel"]), np.asarray(w["conv1"]["kernel"])
    np.testing.assert_allclose(mk[fresh], np.sqrt(c), rtol=1e-6)
    assert np.all(wk[fresh] == 0)
    kept = np.asarray(old) & np.asarray(new) & ~fresh
    np.testing.assert_array_equal(mk[kept], np.asarray(m0["conv1"]["kernel"])[kept])
    np.testing.assert_array_equal(wk[kept], np.asarray(w0["conv1"]["kernel"])[kept])
    trace = out.opt_state.inner_state[0].trace["conv1"]["kernel"]
    assert np.all(np.asarray(trace.m)[fresh] == 0) and np.all(np.asarray(trace.w)[fresh] == 0)
    # params stay consistent with m * w, and grown weights leave zero on the next step
    p2, _ = step(out.params, out.opt_state)
    assert len(traces) == 1, "the RiGL update recompiled the step"
    assert np.mean(np.asarray(p2["conv1"]["kernel"])[fresh] != 0) > 0.9
    assert bool(jnp.all(jnp.where(new, True, p2["conv1"]["kernel"] == 0)))


def test_dropped_and_regrown_weight_restarts_at_zero():
    params = {"fc": {"kernel": jnp.array([[0.1, 2.0], [3.0, 0.0]])}}
    mask = {"fc": {"kernel": jnp.array([[True, True], [True, False]])}}
    grads = {"fc": {"kernel": jnp.array([[9.0, 0.0], [0.0, 1.0]])}}  # the smallest has top grad
    tx = optim.masked_updates(optax.sgd(0.1, momentum=0.9), mask)
    state = tx.init(params)
    trace = state.inner_state[0]._replace(trace=jax.tree.map(jnp.ones_like, params))
    state = state._replace(inner_state=(trace, *state.inner_state[1:]))
    out = rigl_update(params, grads, state, 1 / 3, prunable=lambda n, x=None: True, tx=tx)
    np.testing.assert_array_equal(out.mask["fc"]["kernel"], mask["fc"]["kernel"])
    assert float(out.params["fc"]["kernel"][0, 0]) == 0.0  # regrown at zero
    assert float(out.opt_state.inner_state[0].trace["fc"]["kernel"][0, 0]) == 0.0
    assert float(out.opt_state.inner_state[0].trace["fc"]["kernel"][0, 1]) == 1.0  # kept


def test_drop_fraction_schedule():
    assert float(drop_fraction(0, 100, 0.3)) == pytest.approx(0.3)
    assert float(drop_fraction(50, 100, 0.3)) == pytest.approx(0.15)
    assert float(drop_fraction(100, 100, 0.3)) == 0.0
    assert float(drop_fraction(150, 100, 0.3)) == 0.0


def test_hook_in_the_engine_keeps_density_and_does_not_recompile():
    from signticket.train import Engine

    model = models.get("mlp", num_classes=3, widths=(16,))
    rs = np.random.RandomState(0)
    images = rs.randint(0, 255, (32, 4, 4, 1)).astype(np.uint8)
    labels = rs.randint(0, 3, (32,)).astype(np.int32)
    tx = sign_in(optax.sgd(0.1, momentum=0.9), reset_every=None)
    engine = Engine(model, tx, lambda x, r, t: x.astype(jnp.float32) / 255.0)
    state = engine.init_state(jax.random.PRNGKey(0), images[:1])
    mask = masks.random_mask(jax.random.PRNGKey(1), state.params, 0.8)
    state = state.replace(params=masks.apply_mask(state.params, mask),
                          opt_state=optim.set_mask(state.opt_state, mask))
    density = int(jnp.sum(mask["fc0"]["kernel"]))  # (the state's copy is donated to the step)
    grad_fn = dense_grad_fn(engine, images, labels)
    g = grad_fn(state)
    assert float(jnp.mean(jnp.where(mask["fc0"]["kernel"], 0.0, jnp.abs(g["fc0"]["kernel"])))) > 0
    hook = rigl_hook(grad_fn, end_epoch=3)
    batch = {"image": images, "label": labels}
    for epoch in (1, 2, 3):
        state, _ = engine.train_step(state, batch)
        before = optim.get_mask(state.opt_state)
        state = hook(epoch, state)
        after = optim.get_mask(state.opt_state)
        changed = int(jnp.sum(before["fc0"]["kernel"] != after["fc0"]["kernel"]))
        assert (changed > 0) == (epoch < 3)
        assert int(jnp.sum(after["fc0"]["kernel"])) == density
    assert engine.train_step._cache_size() == 1


def test_bad_input():
    tx = optim.masked_updates(optax.sgd(0.1))
    params, _, state, grads = _setup(tx)
    with pytest.raises(ValueError, match=r"fraction must lie in \[0, 1\]"):
        rigl_update(params, grads, state, 1.5)
    with pytest.raises(ValueError, match="pytree structures differ"):
        rigl_update(params, {"conv0": grads["conv0"]}, state, 0.1)
    with pytest.raises(ValueError, match="no MaskedState or SignInState"):
        rigl_update(params, grads, optax.sgd(0.1).init(params), 0.1)
    with pytest.raises(ValueError, match="every_epochs and end_epoch"):
        rigl_hook(lambda s: None, end_epoch=0)
