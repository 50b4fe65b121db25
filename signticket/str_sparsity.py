"""STR, soft threshold reparameterisation (Kusupati et al., ICML 2020), as an optax transform,
with or without Sign-In.

Each prunable layer is trained as a latent ``W`` and a threshold parameter ``s`` (one scalar per
layer); the model sees ``theta = sign(W) * relu(|W| - g(s))`` with ``g = sigmoid``. Weight decay on
``W`` and on ``s`` raises the thresholds over training, so sparsity emerges; the layer's mask is
``|W| > g(s)``. The gradients (the paper's straight-through of the soft threshold) are
``dL/dW = dL/dtheta * 1[|W| > g(s)]`` and ``dL/ds = -g'(s) * sum(dL/dtheta * sign(W) *
1[|W| > g(s)])``.

The caller's params stay plain theta: :func:`str_sparsity` keeps ``W`` and ``s`` in its state and
returns updates that land exactly on the new theta. The optimizer of ``(W, s)`` is ``inner``: a
plain ``optax.sgd`` or ``sign_in(optax.sgd)`` (then ``W = m * w``: Sign-In on the latent weights;
``s`` is not a kernel, so it stays plain). The current mask is kept in the state's ``mask`` field
(registered with ``optim``, so ``optim.get_mask`` reads it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from signticket.optim import register_mask_state
from signticket.tree import LeafPredicate, PyTree, is_prunable, named_leaves


class STRState(NamedTuple):
    """State of :func:`str_sparsity`: ``latent`` W and ``s`` like params (None where not
    prunable), the derived ``mask`` and the inner optimizer's state over ``{"w": W, "s": s}``."""

    latent: PyTree
    s: PyTree
    mask: PyTree
    inner_state: optax.OptState


def soft_threshold(w: jax.Array, s: jax.Array) -> jax.Array:
    """``sign(W) * relu(|W| - sigmoid(s))``."""
    return jnp.sign(w) * jax.nn.relu(jnp.abs(w) - jax.nn.sigmoid(s))


def str_sparsity(
    inner: optax.GradientTransformation,
    *,
    s_init: float = -5.0,
    weight_decay: float = 0.0,
    prunable: LeafPredicate = is_prunable,
) -> optax.GradientTransformationExtraArgs:
    """STR around ``inner`` (the optimizer of W, s and the non-prunable leaves).

    Args:
        inner: e.g. ``optax.sgd(lr, momentum=0.9)`` or ``sign_in(optax.sgd(...), reset_every=..)``.
            Give weight decay here in ``weight_decay``, not in ``inner``.
        s_init: initial threshold parameter of every layer (``g(s_init)`` is the initial
            threshold; the paper tunes it per target sparsity).
        weight_decay: coupled L2 on W, on s and on the other leaves (the paper's lambda; it
            drives the sparsity).
        prunable: which leaves are soft-thresholded.
    """
    lam = float(weight_decay)
    inner = optax.with_extra_args_support(inner)

    def _flat_s(s):
        # {"conv1.kernel": s, ...}: not named "kernel", so a Sign-In inner keeps s plain
        return {name.replace("/", "."): v for name, v in named_leaves(s)}

    def _z(params, latent, s):
        # the tree inner optimises: {"w": latent at prunable leaves, theta elsewhere; "s": ...}
        treedef = jax.tree.structure(params)
        w = [p if lt is None else lt for p, lt in zip(treedef.flatten_up_to(params),
                                                       treedef.flatten_up_to(latent), strict=True)]
        return {"w": jax.tree.unflatten(treedef, w), "s": _flat_s(s)}

    def init_fn(params: PyTree) -> STRState:
        leaves, treedef = jax.tree.flatten(params)
        chosen = [bool(prunable(n, x)) for n, x in named_leaves(params)]
        latent = jax.tree.unflatten(treedef, [x if c else None for x, c in zip(leaves, chosen,
                                                                                  strict=True)])
        s = jax.tree.unflatten(treedef, [jnp.asarray(s_init, jnp.float32) if c else None
                                         for c in chosen])
        mask = jax.tree.unflatten(treedef, [
            (jnp.abs(x) > jax.nn.sigmoid(s_init)) if c else jnp.ones(jnp.shape(x), bool)
            for x, c in zip(leaves, chosen, strict=True)])
        return STRState(latent, s, mask, inner.init(_z(params, latent, s)))

    def update_fn(grads, state: STRState, params=None, **extra):
        if params is None:
            raise ValueError("str_sparsity: update needs params: tx.update(grads, state, params)")
        treedef = jax.tree.structure(params)
        g = treedef.flatten_up_to(grads)
        p = treedef.flatten_up_to(params)
        lat = treedef.flatten_up_to(state.latent)
        s = treedef.flatten_up_to(state.s)
        dw, ds = [], []
        for gi, pi, li, si in zip(g, p, lat, s, strict=True):
            if li is None:
                dw.append(gi + lam * pi if lam else gi)
                ds.append(None)
                continue
            thr = jax.nn.sigmoid(si)
            active = jnp.abs(li) > thr
            dw.append(jnp.where(active, gi, 0.0) + lam * li)
            ds.append(-thr * (1 - thr) * jnp.sum(jnp.where(active, gi * jnp.sign(li), 0.0))
                      + lam * si)
        z = _z(params, state.latent, state.s)
        dz = {"w": jax.tree.unflatten(treedef, dw),
              "s": _flat_s(jax.tree.unflatten(treedef, ds))}
        u, inner_state = inner.update(dz, state.inner_state, z, **extra)
        z_new = optax.apply_updates(z, u)
        w_new = treedef.flatten_up_to(z_new["w"])
        s_new_flat = z_new["s"]
        names = [n for n, _ in named_leaves(params)]
        new_lat, new_s, new_mask, updates = [], [], [], []
        for name, pi, li, wi in zip(names, p, lat, w_new, strict=True):
            if li is None:
                new_lat.append(None)
                new_s.append(None)
                new_mask.append(jnp.ones(jnp.shape(pi), bool))
                updates.append(wi - pi)
                continue
            si = s_new_flat[name.replace("/", ".")]
            theta = soft_threshold(wi, si)
            new_lat.append(wi)
            new_s.append(si)
            new_mask.append(theta != 0)
            updates.append(theta - pi)
        unf = lambda xs: jax.tree.unflatten(treedef, xs)
        return unf(updates), STRState(unf(new_lat), unf(new_s), unf(new_mask), inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def initial_params(params: PyTree, s_init: float = -5.0,
                   prunable: LeafPredicate = is_prunable) -> PyTree:
    """The theta a model starts from under STR: the soft-thresholded init."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: soft_threshold(x, jnp.asarray(s_init))
        if prunable("/".join(str(getattr(k, "key", k)) for k in path), x) else x, params)


# The mask is derived (|W| > g(s)) and recomputed every step: set_mask has nothing to keep.
register_mask_state(STRState, lambda state, new: state)
