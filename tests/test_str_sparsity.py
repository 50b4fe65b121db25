"""STR (soft threshold reparameterisation) as an optax transform, with plain SGD and Sign-In."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import TOY_X, make_params, toy_mlp_loss

from signticket import optim
from signticket.sign_in import sign_in
from signticket.str_sparsity import initial_params, soft_threshold, str_sparsity

X = TOY_X
_loss = toy_mlp_loss


def test_one_step_is_sgd_on_latent_and_threshold_through_the_soft_threshold():
    """The transform's gradients are autodiff of L(sign(W) relu(|W| - sigmoid(s)))."""
    latent = make_params()
    s0, lr = -1.0, 0.1
    params = initial_params(latent, s0)
    tx = str_sparsity(optax.sgd(lr), s_init=s0)
    state = tx.init(latent)  # the latent W starts at the given (dense) init
    state = state._replace(latent=jax.tree.map(lambda lt, w: None if lt is None else w,
                                               state.latent, latent,
                                               is_leaf=lambda x: x is None))

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


@pytest.mark.parametrize("kind", ["sgd", "sign_in"])
def test_weight_decay_grows_sparsity_and_theta_is_the_soft_threshold(kind):
    latent = make_params()
    params = initial_params(latent, -4.0)
    inner = (optax.sgd(0.05, momentum=0.9) if kind == "sgd"
             else sign_in(optax.sgd(0.05, momentum=0.9), reset_every=5))
    tx = str_sparsity(inner, s_init=-4.0, weight_decay=0.5)
    state = tx.init(latent)

    @jax.jit
    def step(params, state):
        # decay alone (zero loss gradient): it shrinks W and raises the thresholds g(s)
        u, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        return optax.apply_updates(params, u), state

    def sparsity(p):
        return float(jnp.mean(p["conv1"]["kernel"] == 0))

    first = sparsity(params)
    for _ in range(40):
        params, state = step(params, state)
    assert sparsity(params) > first + 0.1
    chex.assert_trees_all_close(
        params["conv1"]["kernel"],
        soft_threshold(state.latent["conv1"]["kernel"], state.s["conv1"]["kernel"]), atol=1e-5)
    assert state.latent["head"]["kernel"] is None  # the head is not prunable: plain
