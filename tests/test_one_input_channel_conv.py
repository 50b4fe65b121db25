"""Convs of single-channel images (:func:`signticket.models.layers.one_input_channel_conv`):
undifferentiated they run as fused shifted slices, under autodiff as the conv they replaced, so
evaluation gets faster while training's ops and numbers stay what they were."""

import chex
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from signticket.models import layers
from signticket.native import conv as native_conv

DN = ("NHWC", "HWIO", "NHWC")
PADS = ((1, 1), (1, 1))

needs_onednn = pytest.mark.skipif(not native_conv.available(),
                                  reason="the oneDNN library is not built")


def _operands(hw=(9, 7), kernel=(3, 3), cout=6, batch=4):
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, *hw, 1))
    w = jax.random.normal(jax.random.PRNGKey(1), (*kernel, 1, cout))
    return x, w


def _reference(x, w, strides=(1, 1), pads=PADS):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=DN,
                                    precision="highest")


def _routed(x, w, strides=(1, 1), pads=PADS):
    return layers.conv_general_dilated(x, w, strides, pads, dimension_numbers=DN)


def _loss(conv):
    return lambda w, x: jnp.sum(jnp.sin(conv(x, w)))


@pytest.mark.parametrize("hw,kernel,pads", [
    ((9, 7), (3, 3), PADS), ((28, 28), (3, 3), PADS), ((6, 5), (5, 3), ((2, 2), (1, 1))),
    ((6, 6), (3, 3), ((0, 0), (2, 1))), ((5, 5), (1, 1), ((0, 0), (0, 0)))])
def test_forward_gradients_and_hvp_equal_xla_conv(hw, kernel, pads):
    x, w = _operands(hw, kernel)
    chex.assert_trees_all_close(_routed(x, w, pads=pads), _reference(x, w, pads=pads), atol=1e-5)
    ours, ref = (_loss(lambda x_, w_, f=f: f(x_, w_, pads=pads)) for f in (_routed, _reference))
    chex.assert_trees_all_close(jax.grad(ours, argnums=(0, 1))(w, x),
                                jax.grad(ref, argnums=(0, 1))(w, x), atol=1e-4)
    # forward over reverse (curvature.py's Hessian-vector products)
    v = jax.random.normal(jax.random.PRNGKey(2), w.shape)
    hvp = [jax.jvp(jax.grad(f), (w, x), (v, jnp.zeros_like(x)))[1] for f in (ours, ref)]
    chex.assert_trees_all_close(*hvp, atol=1e-3)


def test_vmapped_members_forward_and_gradient():
    x, w = _operands()
    ws = jnp.stack([w, -2.0 * w])
    chex.assert_trees_all_close(jax.vmap(_routed, in_axes=(None, 0))(x, ws)[1],
                                _reference(x, ws[1]), atol=1e-5)
    grads = jax.vmap(jax.grad(_loss(_routed)), in_axes=(0, None))(ws, x)
    chex.assert_trees_all_close(grads[1], jax.grad(_loss(_reference))(ws[1], x), atol=1e-4)


@needs_onednn
def test_only_the_undifferentiated_forward_leaves_onednn():
    x, w = _operands()
    assert "signticket_onednn_conv" not in str(jax.make_jaxpr(_routed)(x, w))
    grad_ops = str(jax.make_jaxpr(jax.grad(_loss(_routed)))(w, x))
    assert "signticket_onednn_conv[" in grad_ops
    assert "signticket_onednn_conv_kernel_grad" in grad_ops
    # the data needs no gradient, so no input-gradient conv runs (the tangent is zero)
    assert "signticket_onednn_conv_input_grad" not in grad_ops


@needs_onednn
def test_training_is_bit_identical_to_onednn_alone():
    """Under autodiff the routed conv is oneDNN's forward and gradient ops, so a train step's
    loss and gradients equal (bitwise) those of calling oneDNN directly."""
    x, w = _operands((28, 28), cout=16, batch=8)

    def onednn(x_, w_):
        return native_conv.conv(x_, w_, (1, 1), PADS)

    step = lambda conv: jax.jit(jax.value_and_grad(_loss(conv), argnums=(0, 1)))
    chex.assert_trees_all_equal(step(_routed)(w, x), step(onednn)(w, x))


def test_without_onednn_the_gradient_runs_as_im2col(monkeypatch):
    monkeypatch.setenv(native_conv.ENV_BACKEND, "xla")
    x, w = _operands()
    grad_ops = str(jax.make_jaxpr(jax.grad(_loss(_routed)))(w, x))
    assert "dot_general" in grad_ops and "onednn" not in grad_ops
    chex.assert_trees_all_close(jax.grad(_loss(_routed))(w, x),
                                jax.grad(_loss(_reference))(w, x), atol=1e-4)


@pytest.mark.parametrize("case", ["stride 2", "bfloat16", "two channels"])
def test_other_convs_keep_their_route(case):
    """Strided convs (not measured), bfloat16 (the taps would sum in bfloat16) and several
    input channels do not take the taps."""
    x, w = _operands()
    strides = (2, 2) if case == "stride 2" else (1, 1)
    if case == "bfloat16":
        x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    if case == "two channels":
        x, w = jnp.concatenate([x, x], -1), jnp.concatenate([w, w], 2)
    assert "one_input_channel_conv" not in str(jax.make_jaxpr(
        lambda x_, w_: _routed(x_, w_, strides))(x, w))
    tol = 0.1 if case == "bfloat16" else 1e-5
    chex.assert_trees_all_close(_routed(x, w, strides).astype(jnp.float32),
                                _reference(x, w, strides).astype(jnp.float32), atol=tol)
