"""STR, soft threshold reparameterisation (Kusupati et al., ICML 2020), as an optax transform,
with or without Sign-In.

Each thresholded layer is trained as a latent ``W`` and one threshold parameter ``s`` per layer
(a scalar: ``STRConv.sparseThreshold`` of shape [1, 1] in the official code,
RAIVNLab/STR utils/conv_type.py); the model sees ``theta = sign(W) * relu(|W| - sigmoid(s))``
(``sparseFunction``). The gradients are plain autodiff of that expression, as the official
``forward`` is (``torch.sign`` has zero derivative, ``relu'(0) = 0``)::

    dL/dW = dL/dtheta * 1[|W| > g(s)]
    dL/ds = -g'(s) * sum(dL/dtheta * sign(W) * 1[|W| > g(s)]),   g = sigmoid

Coupled (PyTorch SGD) weight decay ``λ`` on ``W``, on ``s`` and on every other parameter is
what makes sparsity emerge: it shrinks ``W`` and pulls a negative ``s`` up towards 0, i.e. raises
the threshold (official main.py ``get_optimizer``: the threshold group gets ``st_decay`` if set,
else ``weight_decay``; the configs set none). A layer's sparsity is the fraction of zeros of
``theta`` (``STRConv.getSparsity``); the total is weighted by layer size (main.py).

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

from signticket.errors import UserError
from signticket.optim import register_mask_state
from signticket.tree import LeafPredicate, PyTree, check_same_structure, is_kernel, named_leaves


class STRState(NamedTuple):
    """State of :func:`str_sparsity`: ``latent`` W and ``s`` like params (None where not
    thresholded), the derived ``mask`` and the inner optimizer's state over ``{"w": W, "s": s}``."""

    latent: PyTree
    s: PyTree
    mask: PyTree
    inner_state: optax.OptState


def soft_threshold(w: jax.Array, s: jax.Array) -> jax.Array:
    """``sign(W) * relu(|W| - sigmoid(s))`` (official ``sparseFunction``)."""
    return jnp.sign(w) * jax.nn.relu(jnp.abs(w) - jax.nn.sigmoid(s))


def str_sparsity(
    inner: optax.GradientTransformation,
    *,
    s_init: float = -5.0,
    weight_decay: float = 0.0,
    prunable: LeafPredicate = is_kernel,
    latent: PyTree | None = None,
) -> optax.GradientTransformationExtraArgs:
    """STR around ``inner`` (the optimizer of W, s and the leaves that are not thresholded).

    Args:
        inner: e.g. ``optax.sgd(lr, momentum=0.9)`` or ``sign_in(optax.sgd(...), reset_every=..)``.
            With a plain ``inner``, give the decay here in ``weight_decay``. With Sign-In, give
            it to Sign-In (``weight_decay=λ`` reaches ``s`` and the plain leaves,
            ``mw_weight_decay=λ`` reaches ``m`` and ``w``, as every PyTorch parameter's decay
            would) and 0 here, or leaves would be decayed twice.
        s_init: initial threshold parameter of every layer (``sigmoid(s_init)`` is the initial
            threshold). Official ImageNet configs: -3200 (ResNet-50, 90.23 %), -12800
            (MobileNetV1), i.e. threshold 0 at the start; it is tuned per target sparsity.
        weight_decay: coupled L2 ``λ`` on W, on s and on the leaves that are not thresholded
            (official: one λ on all parameters).
        prunable: which leaves are soft-thresholded. Default every conv and dense kernel, first
            layer and classifier included, as the official configs (``first_layer_dense`` and
            ``last_layer_dense`` unset; the ResNet classifier is an ``STRConv`` 1x1).
        latent: the dense init ``W0`` (params structure). Default: the params passed to
            ``init``. Give ``W0`` here and start the model at :func:`initial_params` ``(W0)`` so
            that the first forward already sees the thresholded weights, as ``STRConv`` does.
    """
    lam = float(weight_decay)
    if lam < 0:
        raise UserError(f"str_sparsity: weight_decay must be >= 0, got {lam}")
    inner = optax.with_extra_args_support(inner)

    def _flat_s(s):
        # {"conv1.kernel": s, ...}: not named "kernel", so a Sign-In inner keeps s plain
        return {name.replace("/", "."): v for name, v in named_leaves(s)}

    def _z(params, latent, s):
        # the tree inner optimises: {"w": latent at thresholded leaves, theta elsewhere; "s": ...}
        treedef = jax.tree.structure(params)
        w = [p if lt is None else lt for p, lt in zip(treedef.flatten_up_to(params),
                                                       treedef.flatten_up_to(latent), strict=True)]
        return {"w": jax.tree.unflatten(treedef, w), "s": _flat_s(s)}

    def init_fn(params: PyTree) -> STRState:
        w0 = params if latent is None else latent
        if latent is not None:
            check_same_structure(params, latent, "params", "latent")
        leaves, treedef = jax.tree.flatten(w0)
        chosen = [bool(prunable(n, x)) for n, x in named_leaves(w0)]
        lat = jax.tree.unflatten(treedef, [x if c else None for x, c in zip(leaves, chosen,
                                                                               strict=True)])
        s = jax.tree.unflatten(treedef, [jnp.asarray(s_init, jnp.float32) if c else None
                                         for c in chosen])
        mask = jax.tree.unflatten(treedef, [
            (soft_threshold(x, jnp.asarray(s_init, jnp.float32)) != 0) if c
            else jnp.ones(jnp.shape(x), bool) for x, c in zip(leaves, chosen, strict=True)])
        return STRState(lat, s, mask, inner.init(_z(params, lat, s)))

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
                   prunable: LeafPredicate = is_kernel) -> PyTree:
    """The theta a model starts from under STR: the soft-thresholded init."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: soft_threshold(x, jnp.asarray(s_init, jnp.float32))
        if prunable("/".join(str(getattr(k, "key", k)) for k in path), x) else x, params)


def str_states(opt_state) -> list[STRState]:
    """Every :class:`STRState` inside ``opt_state``."""
    is_node = lambda n: isinstance(n, STRState)
    return [n for n in jax.tree.leaves(opt_state, is_leaf=is_node) if is_node(n)]


def sparsity(opt_state) -> tuple[float, dict[str, float], dict[str, float]]:
    """``(overall, per_layer, thresholds)`` of the (single) STR state in ``opt_state``: the
    fraction of zeros of theta over the thresholded layers, weighted by layer size (official
    main.py's total), each layer's own, and each layer's threshold ``sigmoid(s)``."""
    states = str_states(opt_state)
    if len(states) != 1:
        raise UserError(f"sparsity: expected one STRState in opt_state, found {len(states)}")
    st = states[0]
    treedef = jax.tree.structure(st.mask)
    names = [n for n, _ in named_leaves(st.mask)]
    zeros = total = 0
    per_layer, thresholds = {}, {}
    for name, mk, lt, s in zip(names, jax.tree.leaves(st.mask), treedef.flatten_up_to(st.latent),
                               treedef.flatten_up_to(st.s), strict=True):
        if lt is None:
            continue
        z, n = int(jnp.sum(~mk)), int(mk.size)
        per_layer[name] = z / n
        thresholds[name] = float(jax.nn.sigmoid(s))
        zeros, total = zeros + z, total + n
    return zeros / max(total, 1), per_layer, thresholds


# The mask is derived (|W| > g(s)) and recomputed every step: set_mask has nothing to keep.
register_mask_state(STRState, lambda state, new: state)
