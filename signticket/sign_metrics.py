"""Sign-flip and Sign-In balance metrics, per layer, over unmasked entries.

* flips vs init: :func:`signticket.signs.sign_flips` ``(init, params, mask)``.
* cumulative epoch-to-epoch flips: a :class:`FlipTracker` carried between epochs (a pytree, so it
  can live in ``TrainState.hook_state`` and survive a resume) -> :func:`cumulative_flips`.
* the Sign-In balance ``m^2 - w^2`` per layer: :func:`balance_per_layer`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from signticket.tree import LeafPredicate, PyTree, check_same_structure, is_prunable, named_leaves


class LayerStats(NamedTuple):
    """A quantity overall (pooled over entries) and per leaf path."""

    overall: jax.Array
    per_layer: dict[str, jax.Array]


class FlipTracker(NamedTuple):
    """Signs at the last observation (int8 -1/0/+1, like params) and, per leaf, the running
    count of sign changes between consecutive observations (int32 scalars, like params)."""

    signs: PyTree
    changes: PyTree


def _mask_leaf(mask_leaves: dict, name: str, x) -> jax.Array:
    return jnp.asarray(mask_leaves.get(name, True), bool) & jnp.ones(jnp.shape(x), bool)


def flip_tracker(params: PyTree) -> FlipTracker:
    """A tracker that has observed ``params`` (usually the init) and counted nothing yet."""
    return _new_tracker(params)


@jax.jit  # one program per architecture, not an eager sign per leaf shape
def _new_tracker(params: PyTree) -> FlipTracker:
    return FlipTracker(
        signs=jax.tree.map(lambda x: jnp.sign(x).astype(jnp.int8), params),
        changes=jax.tree.map(lambda x: jnp.zeros((), jnp.int32), params),
    )


def track_flips(tracker: FlipTracker, params: PyTree, mask: PyTree | None = None) -> FlipTracker:
    """Observe ``params``: add the number of unmasked entries that crossed zero since the last
    observation (signs strictly opposite; leaving or reaching exactly 0, as pruned and regrown
    weights do, is not a flip) to each leaf's count. Call once per epoch for epoch-to-epoch
    flips."""
    check_same_structure(tracker.signs, params, "tracker", "params")
    if mask is None:
        mask = jax.tree.map(lambda x: True, params)
    else:
        check_same_structure(params, mask, "params", "mask")
    new = jax.tree.map(lambda x: jnp.sign(x).astype(jnp.int8), params)
    changes = jax.tree.map(
        lambda c, a, b, m: c + jnp.sum((a * b < 0) & jnp.asarray(m, bool)).astype(jnp.int32),
        tracker.changes, tracker.signs, new, mask,
    )
    return FlipTracker(new, changes)


def cumulative_flips(
    tracker: FlipTracker, mask: PyTree | None = None, where: LeafPredicate = is_prunable
) -> LayerStats:
    """Sign changes counted so far per unmasked weight (``count / n_unmasked``; can exceed 1
    when weights flip back and forth), overall and per layer."""
    mask_leaves = dict(named_leaves(mask)) if mask is not None else {}
    counts = dict(named_leaves(tracker.changes))
    per_layer, total, n_all = {}, 0, 0
    for name, s in named_leaves(tracker.signs):
        if not where(name, s):
            continue
        n = jnp.sum(_mask_leaf(mask_leaves, name, s))
        per_layer[name] = counts[name] / jnp.maximum(n, 1)
        total, n_all = total + counts[name], n_all + n
    return LayerStats(jnp.asarray(total / jnp.maximum(n_all, 1), jnp.float32), per_layer)


def balance_per_layer(opt_state: Any, where: LeafPredicate = is_prunable) -> LayerStats:
    """Mean of ``m^2 - w^2`` over the unmasked entries of each reparameterised layer of the
    (single) Sign-In state in ``opt_state``; it starts at ``c`` and decays between resets."""
    from signticket.sign_in import sign_in_states

    states = sign_in_states(opt_state)
    if len(states) != 1:
        raise ValueError(f"balance_per_layer: expected one SignInState, found {len(states)}")
    st = states[0]
    treedef = jax.tree.structure(st.mask)
    names = [n for n, _ in named_leaves(st.mask)]
    per_layer, total, n_all = {}, 0.0, 0
    for name, mk, m, w in zip(names, jax.tree.leaves(st.mask), treedef.flatten_up_to(st.m),
                              treedef.flatten_up_to(st.w), strict=True):
        if m is None or not where(name, m):
            continue
        s = jnp.sum(jnp.where(mk, m * m - w * w, 0.0))
        n = jnp.sum(mk)
        per_layer[name] = s / jnp.maximum(n, 1)
        total, n_all = total + s, n_all + n
    return LayerStats(jnp.asarray(total / jnp.maximum(n_all, 1), jnp.float32), per_layer)
