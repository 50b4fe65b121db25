"""Applying permutations to params, masks, batch statistics, optimizer states and train states."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from signticket.rebasin.perms import check_perms
from signticket.rebasin.spec import Axes, Perms, PermutationSpec, key_paths
from signticket.tree import PyTree


def permute_leaf(x: jax.Array, axes: Axes, perms: Perms, except_axis: int | None = None):
    """``x`` with ``perms[axes[i]]`` gathered along every named axis ``i`` (but ``except_axis``)."""
    for i, p in enumerate(axes):
        if p is not None and i != except_axis:
            x = jnp.take(x, perms[p], axis=i)
    return x


@functools.partial(jax.jit, static_argnums=2)
def _permute_leaves(leaves: list, perms: Perms, axes: tuple[Axes, ...]) -> list:
    # One compiled program per (spec, tree): eager gathers would compile one kernel per shape.
    return [permute_leaf(x, ax, perms) for x, ax in zip(leaves, axes, strict=True)]


def _permute_mapping(spec: PermutationSpec, perms: Perms, tree: PyTree, what: str) -> PyTree:
    paths = [path for path, _ in key_paths(tree)]
    leaves, treedef = jax.tree.flatten(tree)
    axes = tuple(
        spec.check_leaf(path, tuple(jnp.shape(leaf)), what)
        for path, leaf in zip(paths, leaves, strict=True)
    )
    return jax.tree.unflatten(treedef, _permute_leaves(leaves, perms, axes))


def _covers_any(spec: PermutationSpec, tree: PyTree) -> bool:
    return any(path in spec.axes for path, _ in key_paths(tree))


def apply_permutation(spec: PermutationSpec, perms: Perms, tree: Any) -> Any:
    """``tree`` with every leaf permuted along the axes the spec names: ``x[..., perm, ...]``.

    A mapping (params, a bool mask, batch_stats, gradients) must be covered leaf by leaf. Any
    other container (an optax state, a ``TrainState``, a tuple) is searched for the mappings
    inside it: those holding spec leaves (momentum traces, Adam moments, the mask of
    ``masked``) are permuted, and everything else (step counts, rngs, hyperparameter dicts)
    passes through. Pure and jit-able (``perms`` may be traced).

    Raises:
        ValueError: ``perms`` do not fit the spec, or a leaf is not covered or has the wrong size.
    """
    check_perms(spec, perms)
    if isinstance(tree, Mapping):
        return _permute_mapping(spec, perms, tree, "tree")

    def visit(node):
        if isinstance(node, Mapping) and _covers_any(spec, node):
            return _permute_mapping(spec, perms, node, "state")
        return node

    return jax.tree.map(visit, tree, is_leaf=lambda n: isinstance(n, Mapping))
