"""RiGL (Evci et al., 2020) prune-and-grow, with plain masked optimizers or with Sign-In.

:func:`rigl_update` is one pure step on ``(params, mask, dense grads, opt_state)``: in every
prunable layer drop the ``k = round(f * n_active)`` active weights of smallest ``|theta|`` and
grow the ``k`` inactive ones (just-dropped included) of largest ``|dL/dtheta|``. Grown weights
enter at theta = 0 with fresh optimizer state; under Sign-In at ``(m, w) = (sqrt(c), 0)``. The
layer's density is unchanged.

Plugging into the engine: :func:`rigl_hook` is an ``on_epoch_end(epoch, state) -> state`` for
:func:`signticket.fit.fit` (pass it to ``fit`` / ``runs.train_run(on_epoch_end=...)``); the
mask lives in the optimizer state and the params in ``TrainState``, so RiGL's progress is
checkpointed and a resumed run continues exactly. For RiGL's step-level schedule (every
``delta_t`` steps) call :func:`rigl_update` between ``engine.train_step`` calls in your own loop;
it is jit-able and changes values only, so the train step does not recompile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from signticket.sign_in import get_mask, set_mask
from signticket.train import Engine, TrainState, cross_entropy
from signticket.tree import LeafPredicate, PyTree, check_same_structure, named_leaves
from signticket.tree import is_prunable as _is_prunable


class RiglResult(NamedTuple):
    """Params with dropped and grown entries at 0, the new mask, and the optimizer state
    holding it (optimizer state of every changed entry reset)."""

    params: PyTree
    mask: PyTree
    opt_state: Any


def drop_fraction(step: int | jax.Array, end_step: int, alpha: float = 0.3) -> jax.Array:
    """RiGL's cosine-annealed update fraction ``alpha / 2 (1 + cos(pi t / T_end))``; 0 from
    ``end_step`` on."""
    t = jnp.asarray(step, jnp.float32)
    f = alpha / 2 * (1 + jnp.cos(math.pi * t / end_step))
    return jnp.where(t < end_step, f, 0.0)


def _ranks(scores: jax.Array) -> jax.Array:
    """Position of each entry in ascending order; ties go to the earlier flat index."""
    order = jnp.argsort(scores, stable=True)
    return jnp.empty_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))


def _drop_grow(theta, grad, active, fraction):
    """``(after_drop, new)`` flat masks of one layer."""
    k = jnp.round(fraction * jnp.sum(active)).astype(jnp.int32)
    after_drop = active & (_ranks(jnp.where(active, jnp.abs(theta), jnp.inf)) >= k)
    grow = ~after_drop & (_ranks(jnp.where(after_drop, jnp.inf, -jnp.abs(grad))) < k)
    return after_drop, after_drop | grow


def rigl_update(
    params: PyTree,
    dense_grads: PyTree,
    opt_state: Any,
    fraction: float | jax.Array,
    *,
    prunable: LeafPredicate = _is_prunable,
) -> RiglResult:
    """One RiGL prune-and-grow of every ``prunable`` layer; the mask is read from (and written
    back into) ``opt_state`` (``optim.masked`` or ``sign_in``).

    ``dense_grads``: gradients of the training loss w.r.t. *all* entries of theta, pruned ones
    included (the gradient of a model evaluated at the masked params, as the train step computes
    it before masking). ``fraction`` in ``[0, 1]`` (see :func:`drop_fraction`).
    """
    try:
        f = float(fraction)
    except (TypeError, jax.errors.ConcretizationTypeError):
        f = None  # traced: the caller's schedule is responsible for the range
    if f is not None and not 0.0 <= f <= 1.0:
        raise ValueError(f"RiGL update fraction must lie in [0, 1], got {f}")
    mask = get_mask(opt_state)
    check_same_structure(params, mask, "params", "mask")
    check_same_structure(params, dense_grads, "params", "dense_grads")
    leaves, treedef = jax.tree.flatten(params)
    grads = treedef.flatten_up_to(dense_grads)
    old = [jnp.asarray(m, bool) for m in treedef.flatten_up_to(mask)]
    dropped, new = list(old), list(old)
    for i, (name, _) in enumerate(named_leaves(params)):
        if not prunable(name, leaves[i]):
            continue
        shape = jnp.shape(leaves[i])
        d, n = _drop_grow(leaves[i].ravel(), grads[i].ravel(), old[i].ravel(), fraction)
        dropped[i], new[i] = d.reshape(shape), n.reshape(shape)
    after_drop = jax.tree.unflatten(treedef, dropped)
    new_mask = jax.tree.unflatten(treedef, new)
    # Two swaps, so a weight dropped and regrown in the same update restarts like any grown one
    # (theta = 0, fresh optimizer state; Sign-In: (sqrt(c), 0)) instead of keeping stale state.
    opt_state = set_mask(set_mask(opt_state, after_drop), new_mask)
    params = jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, after_drop)
    return RiglResult(params, new_mask, opt_state)


def dense_grad_fn(
    engine: Engine, images: jax.Array, labels: jax.Array
) -> Callable[[TrainState], PyTree]:
    """``state -> dL/dtheta`` on a fixed batch (no augmentation; BatchNorm in training mode,
    its statistics update discarded), jit-compiled once. A fixed batch keeps RiGL
    deterministic, so a resumed run regrows the same weights."""
    images = jnp.asarray(images)
    labels = jnp.asarray(labels)

    @jax.jit
    def grads(params, batch_stats):
        x = engine.preprocess(images, None, False)

        def loss(p):
            variables = {"params": p, **({"batch_stats": batch_stats} if batch_stats else {})}
            logits, _ = engine.model.apply(variables, x, train=True, mutable=["batch_stats"])
            return cross_entropy(logits, labels).mean()

        return jax.grad(loss)(params)

    return lambda state: grads(state.params, state.batch_stats)


def rigl_hook(
    grad_fn: Callable[[TrainState], PyTree],
    *,
    end_epoch: int,
    every_epochs: int = 1,
    alpha: float = 0.3,
    prunable: LeafPredicate = _is_prunable,
) -> Callable[[int, TrainState], TrainState]:
    """``on_epoch_end`` hook: after every ``every_epochs``-th epoch before ``end_epoch``, one
    :func:`rigl_update` with fraction :func:`drop_fraction` ``(epoch, end_epoch, alpha)`` and
    gradients from ``grad_fn(state)`` (e.g. :func:`dense_grad_fn`)."""
    if every_epochs < 1 or end_epoch < 1:
        raise ValueError(
            f"rigl_hook: every_epochs and end_epoch must be >= 1, got {every_epochs}, {end_epoch}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"rigl_hook: alpha must lie in [0, 1], got {alpha}")

    def hook(epoch: int, state: TrainState) -> TrainState:
        if epoch % every_epochs or epoch >= end_epoch:
            return state
        f = drop_fraction(epoch, end_epoch, alpha)
        out = rigl_update(state.params, grad_fn(state), state.opt_state, f, prunable=prunable)
        return state.replace(params=out.params, opt_state=out.opt_state)

    return hook
