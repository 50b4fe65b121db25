"""Pytree helpers: key paths and leaf predicates over Flax ``params``-shaped trees.

A *leaf predicate* is a function ``(path: str, leaf) -> bool`` where ``path`` is the leaf's key
path joined by ``"/"`` (e.g. ``"stage0_block1/conv2/kernel"``). Predicates decide which leaves
are pruned, which get transferred signs, which are normalization parameters, and so on; every
default below can be replaced by the caller's own predicate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
LeafPredicate = Callable[[str, Any], bool]

HEAD_NAME = "head"


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_str(path: tuple) -> str:
    """``"a/b/kernel"`` for a ``jax.tree_util`` key path."""
    return "/".join(_key_name(k) for k in path)


def leaf_paths(tree: PyTree) -> PyTree:
    """A tree of the same structure whose leaves are their own ``"/"``-joined key paths."""
    return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
    """``[(path, leaf), ...]`` in the tree's flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(p), leaf) for p, leaf in flat]


def _parts(path: str) -> list[str]:
    return path.split("/")


def _module(path: str) -> str:
    parts = _parts(path)
    return parts[-2].lower() if len(parts) > 1 else ""


def is_head(path: str, leaf: Any = None) -> bool:
    """Leaves of the classifier layer: any module named ``head`` on the path."""
    return HEAD_NAME in _parts(path)[:-1]


def is_norm(path: str, leaf: Any = None) -> bool:
    """BatchNorm/LayerNorm scale and bias (module named ``bn*``, ``ln*``, ``*_bn``, ``*norm*``)."""
    module = _module(path)
    named_norm = (
        module.startswith(("bn", "ln")) or module.endswith(("_bn", "_ln")) or "norm" in module
    )
    return named_norm and _parts(path)[-1] in ("scale", "bias")


def is_kernel(path: str, leaf: Any = None) -> bool:
    """Conv and dense weight matrices (leaves named ``kernel``)."""
    return _parts(path)[-1] == "kernel" and not is_norm(path)


def is_bias(path: str, leaf: Any = None) -> bool:
    """Biases of conv and dense layers (not normalization biases)."""
    return _parts(path)[-1] == "bias" and not is_norm(path)


def is_prunable(path: str, leaf: Any = None) -> bool:
    """Default pruning scope: conv and dense kernels, except the classifier head."""
    return is_kernel(path) and not is_head(path)


def any_of(*predicates: LeafPredicate) -> LeafPredicate:
    """A predicate true where any of ``predicates`` is."""
    return lambda path, leaf=None: any(p(path, leaf) for p in predicates)


def select(tree: PyTree, predicate: LeafPredicate) -> PyTree:
    """Bool pytree (Python bools, static) marking the leaves where ``predicate`` holds."""
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(predicate(path_str(p), x)), tree)


def check_same_structure(a: PyTree, b: PyTree, what_a: str = "a", what_b: str = "b") -> None:
    """Raise ``ValueError`` naming the first difference unless ``a`` and ``b`` match in
    structure and leaf shapes."""
    pa = dict(named_leaves(a))
    pb = dict(named_leaves(b))
    if pa.keys() != pb.keys():
        only_a = sorted(set(pa) - set(pb))
        only_b = sorted(set(pb) - set(pa))
        raise ValueError(
            f"pytree structures differ: {what_a} and {what_b} do not have the same leaves "
            f"(only in {what_a}: {only_a[:5]}; only in {what_b}: {only_b[:5]})"
        )
    for name, x in pa.items():
        sx, sy = jnp.shape(x), jnp.shape(pb[name])
        if sx != sy:
            raise ValueError(
                f"pytree leaf shapes differ at {name!r}: {what_a} has {sx}, {what_b} has {sy}"
            )


def tree_size(tree: PyTree) -> int:
    """Total number of scalar entries in all leaves."""
    return sum(int(jnp.size(x)) for x in jax.tree_util.tree_leaves(tree))
