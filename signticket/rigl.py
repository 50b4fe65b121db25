"""RiGL (Evci et al., 2020) prune-and-grow, with plain masked optimizers or with Sign-In.

:func:`rigl` is RiGL as the paper runs it: an optax transform (:func:`signticket.dst.mask_updater`)
that, inside the jitted train step, every ``delta_t`` steps before ``end_step`` drops in every
prunable layer the ``k = round(f_t * n_active)`` active weights of smallest ``|theta|`` and grows
the ``k`` inactive ones (just-dropped included) of largest ``|dL/dtheta|`` of the *current
batch's dense gradient*, ``f_t`` the cosine-annealed :func:`drop_fraction`. Grown weights enter
at theta = 0 with fresh optimizer state; under Sign-In at ``(m, w) = (sqrt(beta), 0)``. Each
layer's density is unchanged (start from an ERK mask, as the paper does).

:func:`rigl_update` is the same prune-and-grow as one pure function on ``(params, dense grads,
opt_state)``; :func:`rigl_hook` applies it once per epoch from a fixed batch (the former,
coarser schedule; kept for callers that use it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from signticket.dst import mask_updater
from signticket.losses import cross_entropy
from signticket.sign_in import get_mask, set_mask
from signticket.tree import LeafPredicate, PyTree, check_same_structure, named_leaves
from signticket.tree import is_prunable as _is_prunable

if TYPE_CHECKING:  # the once-per-epoch helpers below take the lab's engine; the core does not
    from signticket.train import Engine, TrainState


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


def rigl_masks(
    params: PyTree, dense_grads: PyTree, mask: PyTree, fraction: float | jax.Array,
    prunable: LeafPredicate = _is_prunable,
) -> tuple[PyTree, PyTree]:
    """``(mask after drop, mask after grow)`` of one RiGL update of every ``prunable`` layer."""
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
    return jax.tree.unflatten(treedef, dropped), jax.tree.unflatten(treedef, new)


def rigl(
    inner: optax.GradientTransformation,
    *,
    delta_t: int,
    end_step: int,
    alpha: float = 0.3,
    prunable: LeafPredicate = _is_prunable,
) -> optax.GradientTransformationExtraArgs:
    """RiGL per step (Evci et al. 2020, Alg. 1) around the mask-holding ``inner``
    (``optim.masked_updates(sgd)`` or ``sign_in(sgd)``): at steps ``t`` with ``t % delta_t == 0``
    and ``0 < t < end_step`` one prune-and-grow with fraction ``drop_fraction(t, end_step,
    alpha)`` from the dense gradient the train step passes to ``update``. The paper's defaults:
    ``delta_t = 100``, ``alpha = 0.3``, ``end_step = 0.75 * total steps``, ERK initial mask."""
    if delta_t < 1 or end_step < 1:
        raise ValueError(f"rigl: delta_t and end_step must be >= 1, got {delta_t}, {end_step}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"rigl: alpha must lie in [0, 1], got {alpha}")

    def schedule(t):
        return (t % delta_t == 0) & (t > 0) & (t < end_step)

    def rule(t, params, grads, mask):
        return rigl_masks(params, grads, mask, drop_fraction(t, end_step, alpha), prunable)

    return mask_updater(inner, rule, schedule)


def rigl_update(
    params: PyTree,
    dense_grads: PyTree,
    opt_state: Any,
    fraction: float | jax.Array,
    *,
    prunable: LeafPredicate = _is_prunable,
    tx: optax.GradientTransformation | None = None,
) -> RiglResult:
    """One RiGL prune-and-grow of every ``prunable`` layer; the mask is read from (and written
    back into) ``opt_state`` (``optim.masked_updates`` or ``sign_in``).

    ``dense_grads``: gradients of the training loss w.r.t. *all* entries of theta, pruned ones
    included (the gradient of a model evaluated at the masked params, as the train step computes
    it before masking). ``fraction`` in ``[0, 1]`` (see :func:`drop_fraction`). ``tx``: the
    transform that made ``opt_state``; with it the optimizer state of dropped entries is zeroed
    at once (``optim.set_mask``), also of one regrown in this update.
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
    after_drop, new_mask = rigl_masks(params, dense_grads, mask, fraction, prunable)
    # Two swaps, so a weight dropped and regrown in the same update restarts like any grown one
    # (theta = 0, fresh optimizer state; Sign-In: (sqrt(c), 0)) instead of keeping stale state.
    opt_state = set_mask(set_mask(opt_state, after_drop, tx), new_mask, tx)
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
    tx: optax.GradientTransformation | None = None,
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
        out = rigl_update(state.params, grad_fn(state), state.opt_state, f, prunable=prunable,
                          tx=tx)
        return state.replace(params=out.params, opt_state=out.opt_state)

    return hook
