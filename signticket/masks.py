"""Masks: bool pytrees with the structure of ``params`` (non-prunable leaves all True).

Creation by magnitude (global or layerwise, exact counts), at random (uniform or ERK), sparsity
statistics, and applying a mask. Everything here is a pure function of pytrees.

Which leaves are pruned: those ``prunable`` selects (default: conv and dense kernels) that are
not under a module named in ``keep_dense`` (default ``None`` = :data:`DEFAULT_KEEP_DENSE`, i.e.
``("head",)``, the classifier of every model in :mod:`signticket.models`). Pass your
classifier's module name, e.g. ``keep_dense=("classifier",)``, or ``()`` to prune every kernel.

Inputs are validated and bad ones raise :class:`~signticket.errors.UserError` (a
``ValueError``): masks must have bool leaves, masks and params the same structure and shapes,
fractions lie in ``[0, 1)``, the pruning scope select at least one leaf, and Flax NNX objects
are refused with the conversion to use. These checks read only structure and dtypes, so every
function stays jit-able. The one value check, no NaN/inf among the weights ranked by
:func:`magnitude_prune` (NaN would rank as the largest magnitude and always be kept), runs on
concrete inputs only: under ``jit`` it is skipped, so check inputs once outside.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from signticket.errors import UserError
from signticket.tree import (
    DEFAULT_KEEP_DENSE as DEFAULT_KEEP_DENSE,  # re-exported: documented here
)
from signticket.tree import (
    LeafPredicate,
    PyTree,
    check_bool_leaves,
    check_finite_leaves,
    check_plain_pytree,
    check_same_structure,
    is_kernel,
    named_leaves,
    pruning_scope,
    resolve_keep_dense,
)


def check_unit_interval(name: str, value: float) -> None:
    """Raise :class:`UserError` unless ``value`` (when concrete) lies in ``[0, 1)``."""
    try:
        v = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return  # traced: validated by the caller's concrete call
    if not 0.0 <= v < 1.0:  # also rejects NaN
        raise UserError(f"{name} must lie in [0, 1), got {v}")


def _scope(tree: PyTree, prunable: LeafPredicate, keep_dense: Sequence[str] | None,
           what: str) -> tuple[LeafPredicate, list[bool]]:
    """The effective pruning predicate and, per flattened leaf, whether it is selected; raises
    if nothing is selected (a predicate or layer names that match no leaf)."""
    scope = pruning_scope(prunable, resolve_keep_dense(tree, keep_dense))
    chosen = [bool(scope(name, x)) for name, x in named_leaves(tree)]
    if not any(chosen):
        names = [name for name, _ in named_leaves(tree)][:8]
        raise UserError(f"the pruning scope selects no leaf of {what} (leaves: {names}); pass "
                        "a `prunable` predicate that matches some, or check `keep_dense`")
    return scope, chosen


def full_mask(params: PyTree) -> PyTree:
    """The dense mask: True everywhere, placed like ``params`` (a mask that lives where later
    rounds' masks will keep pruning compiled once, not once per placement)."""
    return jax.tree.map(lambda x: jnp.ones_like(x, bool) if isinstance(x, jax.Array)
                        else jnp.ones(np.shape(x), bool), params)


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """``params * mask``: pruned entries become exactly zero."""
    check_same_structure(params, mask, "params", "mask")
    check_bool_leaves(mask)
    return _apply_mask(params, mask)


# One program per architecture instead of one eager op (each compiled on first use) per leaf.
@jax.jit
def _apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def _rank(scores: jax.Array) -> jax.Array:
    """Position of every entry in ascending order; ties go to the earlier flat index."""
    order = jnp.argsort(scores, stable=True)
    return jnp.empty_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))


def _prune_flat(scores: jax.Array, active: jax.Array, fraction: float) -> jax.Array:
    """Active-after-pruning flags: drop the ``round(fraction * n_active)`` lowest active scores."""
    n_remove = jnp.round(fraction * jnp.sum(active)).astype(jnp.int32)
    ranks = _rank(jnp.where(active, scores, jnp.inf))
    return active & (ranks >= n_remove)


def magnitude_prune(
    params: PyTree,
    mask: PyTree,
    fraction: float,
    scope: Literal["global", "layerwise"] = "global",
    prunable: LeafPredicate = is_kernel,
    keep_dense: Sequence[str] | None = None,
) -> PyTree:
    """Remove the ``round(fraction * surviving)`` smallest-|theta| surviving prunable weights.

    ``global``: one threshold over all prunable leaves together; ``layerwise``: the same fraction
    in every prunable leaf. Ties are broken by flat position, so the count is exact. Pruned
    weights are never revived: the result is ``mask & ~pruned``. The pruned leaves are those
    ``prunable`` selects outside the modules named in ``keep_dense`` (``None``: ``("head",)``,
    see the module docstring). Raises :class:`UserError` on a non-bool mask, NaN/inf weights
    in the scope (concrete inputs only), or a scope that selects nothing.
    """
    check_unit_interval("pruning fraction", fraction)
    if scope not in ("global", "layerwise"):
        raise UserError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    check_same_structure(params, mask, "params", "mask")
    check_bool_leaves(mask)
    where, chosen = _scope(params, prunable, keep_dense, "params")
    check_finite_leaves(params, "params", where)
    leaves, treedef = jax.tree.flatten(params)
    masks = [jnp.asarray(m, bool) for m in treedef.flatten_up_to(mask)]
    idx = tuple(i for i, c in enumerate(chosen) if c)
    return jax.tree.unflatten(treedef, _prune_leaves(leaves, masks, fraction, idx, scope))


# One program for the whole selection (compiled once per architecture and scope) rather than
# dozens of eager ops, each compiled on first use: IMP's pruning phase was mostly compilation.
@functools.partial(jax.jit, static_argnames=("idx", "scope"))
def _prune_leaves(
    leaves: list[jax.Array], masks: list[jax.Array], fraction: float, idx: tuple[int, ...],
    scope: str,
) -> list[jax.Array]:
    out = list(masks)
    if scope == "layerwise":
        for i in idx:
            flat = _prune_flat(jnp.abs(leaves[i]).ravel(), out[i].ravel(), fraction)
            out[i] = flat.reshape(out[i].shape)
        return out
    scores = jnp.concatenate([jnp.abs(leaves[i]).ravel() for i in idx])
    active = jnp.concatenate([out[i].ravel() for i in idx])
    kept = _prune_flat(scores, active, fraction)
    offset = 0
    for i in idx:
        n = out[i].size
        out[i] = kept[offset : offset + n].reshape(out[i].shape)
        offset += n
    return out


def erk_densities(
    shapes: dict[str, tuple[int, ...]], density: float, power_scale: float = 1.0
) -> dict[str, float]:
    """Erdős–Rényi-Kernel per-layer densities (RigL): ``d_l ∝ (Σ dims) / (Π dims)``, scaled so
    the total kept count is ``density * Σ sizes``; layers that would exceed 1 are kept dense and
    the rest rescaled."""
    sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
    raw = {k: (sum(s) / np.prod(s)) ** power_scale for k, s in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(sizes[k] for k in dense)
        denom = sum(raw[k] * sizes[k] for k in shapes if k not in dense)
        eps = budget / denom if denom > 0 else 0.0
        over = [k for k in shapes if k not in dense and eps * raw[k] > 1.0]
        if not over:
            break
        dense.update(over)
    return {k: 1.0 if k in dense else float(eps * raw[k]) for k in shapes}


def random_mask(
    key: jax.Array,
    params: PyTree,
    sparsity: float,
    distribution: Literal["uniform", "erk"] = "uniform",
    prunable: LeafPredicate = is_kernel,
    keep_dense: Sequence[str] | None = None,
) -> PyTree:
    """A random mask with the given overall sparsity over the prunable leaves.

    ``uniform``: every prunable leaf keeps ``round((1 - sparsity) * size)`` entries; ``erk``:
    per-layer densities from :func:`erk_densities`. Kept entries are uniform at random.
    Prunable leaves: ``prunable`` outside ``keep_dense`` (see :func:`magnitude_prune`).
    """
    check_unit_interval("sparsity", sparsity)
    if distribution not in ("uniform", "erk"):
        raise UserError(f"distribution must be 'uniform' or 'erk', got {distribution!r}")
    check_plain_pytree(params, "params")
    _, chosen = _scope(params, prunable, keep_dense, "params")
    leaves, treedef = jax.tree.flatten(params)
    names = [name for name, _ in named_leaves(params)]
    shapes = {names[i]: tuple(jnp.shape(leaves[i])) for i, c in enumerate(chosen) if c}
    density = 1.0 - float(sparsity)
    if distribution == "erk":
        densities = erk_densities(shapes, density)
    else:
        densities = dict.fromkeys(shapes, density)
    keys = jax.random.split(key, len(leaves))
    out = []
    for i, leaf in enumerate(leaves):
        shape = jnp.shape(leaf)
        if not chosen[i]:
            out.append(jnp.ones(shape, bool))
            continue
        size = int(np.prod(shape))
        keep = round(densities[names[i]] * size)
        ranks = _rank(jax.random.uniform(keys[i], (size,)))
        out.append((ranks < keep).reshape(shape))
    return jax.tree.unflatten(treedef, out)


class Sparsity(NamedTuple):
    """Fraction of pruned entries over prunable leaves, overall and per leaf path."""

    overall: jax.Array
    per_layer: dict[str, jax.Array]


def sparsity(
    mask: PyTree, prunable: LeafPredicate = is_kernel, keep_dense: Sequence[str] | None = None
) -> Sparsity:
    """Sparsity (fraction of False) of ``mask`` over its prunable leaves (``prunable`` outside
    ``keep_dense``, as in :func:`magnitude_prune`), overall and per layer. The mask must have
    bool leaves; a scope that selects no leaf raises instead of reporting 0.0."""
    check_plain_pytree(mask, "mask")
    check_bool_leaves(mask)
    _, selected = _scope(mask, prunable, keep_dense, "mask")
    chosen = {name: m for (name, m), keep in zip(named_leaves(mask), selected, strict=True)
              if keep}
    sizes = np.asarray([np.size(m) for m in chosen.values()], np.int32)
    overall, per_layer = _pruned_fractions(list(chosen.values()), sizes)
    return Sparsity(overall, dict(zip(chosen, per_layer, strict=True)))


@jax.jit  # one program per architecture, not eager sums compiled once per leaf shape
def _pruned_fractions(masks: list, sizes: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    # The sizes are traced, not constants, so the divisions stay divisions (XLA turns a
    # division by a constant into a multiplication, one ulp off the eager form).
    zeros = jnp.stack([jnp.sum(~jnp.asarray(m, bool)) for m in masks])
    fractions = zeros / sizes
    overall = (jnp.sum(zeros) / jnp.sum(sizes)).astype(jnp.float32)
    return overall, [fractions[i] for i in range(len(masks))]
