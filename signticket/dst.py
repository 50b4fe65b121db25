"""One mask updater for dense-to-sparse and dynamic sparse training, as an optax transform.

JaxPruner style: a method (RiGL, AC/DC, ...) is a small *mask rule* ``(count, params,
dense_grads, mask) -> (intermediate, new)`` plus a *schedule* ``count -> bool``; the updater
wraps the optimizer that holds the mask (``optim.masked_updates(sgd)`` or ``sign_in(sgd)``,
so every method runs with and without Sign-In unchanged) and, inside the jitted train step, on
scheduled steps

1. computes the new mask from the current params and the *dense* gradient of the current batch
   (the engine differentiates w.r.t. every entry of theta, pruned ones included),
2. swaps it into the inner state with ``set_mask`` (optimizer state of changed entries reset;
   Sign-In entries that are not kept restart at ``(sqrt(beta), 0)``),
3. applies the inner update under the new mask; entries outside it go to exactly 0.

The mask and the step count live in the optimizer state, so a checkpoint holds the method's
progress and a resumed run continues exactly; changing the mask changes values only, so the
train step never recompiles. The first swap goes to ``intermediate`` then the second to ``new``:
RiGL passes (mask after drop, mask after grow), so a weight dropped and regrown in one update
restarts like any grown one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from signticket.sign_in import get_mask, set_mask
from signticket.tree import PyTree

MaskRule = Callable[[jax.Array, PyTree, PyTree, PyTree], tuple[PyTree, PyTree]]
Schedule = Callable[[jax.Array], jax.Array]


class MaskUpdaterState(NamedTuple):
    """State of :func:`mask_updater`: updates applied so far and the inner (mask-holding)
    transform's state."""

    count: jax.Array  # int32
    inner_state: optax.OptState


def mask_updater(
    inner: optax.GradientTransformation, rule: MaskRule, schedule: Schedule
) -> optax.GradientTransformationExtraArgs:
    """Wrap the mask-holding ``inner``: on steps where ``schedule(count)`` is true, replace its
    mask by ``rule(count, params, dense_grads, mask)`` before the update (see module doc)."""
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> MaskUpdaterState:
        return MaskUpdaterState(jnp.zeros((), jnp.int32), inner.init(params))

    def update_fn(grads, state: MaskUpdaterState, params=None, **extra):
        if params is None:
            raise ValueError("mask_updater: update needs params: tx.update(grads, state, params)")
        mask = get_mask(state.inner_state)
        as_bool = lambda t: jax.tree.map(lambda x: jnp.asarray(x, bool), t)

        def change(_):
            mid, new = rule(state.count, params, grads, mask)
            mid, new = as_bool(mid), as_bool(new)
            # tx=inner: the state of dropped entries is zeroed at once (also of one regrown in
            # the same update, which the lazy zeroing of masked_updates would not see)
            return mid, new, set_mask(set_mask(state.inner_state, mid, inner), new, inner)

        def keep(_):
            return mask, mask, state.inner_state

        mid, mask, inner_state = jax.lax.cond(schedule(state.count), change, keep, None)
        # The inner transform sees theta as it is after the drop (0 at every dropped entry, also
        # one regrown in the same update), and its update is taken from there, so grown weights
        # enter at 0 + their first step; entries outside the new mask land on exactly 0.
        start = jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mid)
        u, inner_state = inner.update(grads, inner_state, start, **extra)
        u = jax.tree.map(lambda ui, s, p, m: jnp.where(m, ui + s - p, -p), u, start, params, mask)
        return u, MaskUpdaterState(state.count + 1, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find(opt_state: Any) -> MaskUpdaterState:
    """The (first) :class:`MaskUpdaterState` inside ``opt_state``."""
    is_node = lambda n: isinstance(n, MaskUpdaterState)
    for n in jax.tree.leaves(opt_state, is_leaf=is_node):
        if is_node(n):
            return n
    raise ValueError("opt_state holds no MaskUpdaterState; build the optimizer with mask_updater")


def topk_mask(scores: jax.Array, keep: int) -> jax.Array:
    """The ``keep`` largest ``scores`` (ties to the earlier flat index), as a bool array."""
    flat = scores.ravel()
    order = jnp.argsort(-flat, stable=True)
    ranks = jnp.empty_like(order).at[order].set(jnp.arange(flat.size, dtype=order.dtype))
    return (ranks < keep).reshape(scores.shape)
