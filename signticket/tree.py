"""Pytree helpers: key paths and leaf predicates over Flax ``params``-shaped trees.

A *leaf predicate* is a function ``(path: str, leaf) -> bool`` where ``path`` is the leaf's key
path joined by ``"/"`` (e.g. ``"stage0_block1/conv2/kernel"``). Predicates decide which leaves
are pruned, which get transferred signs, which are normalization parameters, and so on; every
default below can be replaced by the caller's own predicate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from signticket.errors import UserError

PyTree = Any
LeafPredicate = Callable[[str, Any], bool]

HEAD_NAME = "head"
#: Modules kept dense by default by every pruning and mask function (``keep_dense=None``): the
#: classifier, which every model of :mod:`signticket.models` names ``head`` (as the papers'
#: official code leaves the last layer unpruned). A model whose classifier is named otherwise
#: must pass ``keep_dense=("<its name>",)``, or ``()`` to prune every kernel.
DEFAULT_KEEP_DENSE: tuple[str, ...] = (HEAD_NAME,)


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


def resolve_keep_dense(tree: PyTree, keep_dense: Sequence[str] | None) -> tuple[str, ...]:
    """``keep_dense`` as a tuple (``None``: :data:`DEFAULT_KEEP_DENSE`). Names given explicitly
    must each be a module on some path of ``tree``, so a typo cannot silently prune the
    classifier; the default may name nothing (a model without a classifier)."""
    if keep_dense is None:
        return DEFAULT_KEEP_DENSE
    if isinstance(keep_dense, str):
        keep_dense = (keep_dense,)  # a lone name, not its characters
    keep_dense = tuple(keep_dense)
    modules = {part for name, _ in named_leaves(tree) for part in _parts(name)[:-1]}
    missing = [m for m in keep_dense if m not in modules]
    if missing:
        raise UserError(f"keep_dense names module(s) {missing} that params do not have "
                        f"(modules: {sorted(modules)[:12]})")
    return keep_dense


def in_modules(path: str, modules: Sequence[str]) -> bool:
    """Whether any module on ``path`` (not the leaf name) is one of ``modules``."""
    return any(part in modules for part in _parts(path)[:-1])


def pruning_scope(prunable: LeafPredicate, keep_dense: Sequence[str]) -> LeafPredicate:
    """``prunable`` minus every leaf under a module named in ``keep_dense``."""
    keep = tuple(keep_dense)
    return lambda path, leaf=None: bool(prunable(path, leaf)) and not in_modules(path, keep)


def any_of(*predicates: LeafPredicate) -> LeafPredicate:
    """A predicate true where any of ``predicates`` is."""
    return lambda path, leaf=None: any(p(path, leaf) for p in predicates)


def select(tree: PyTree, predicate: LeafPredicate) -> PyTree:
    """Bool pytree (Python bools, static) marking the leaves where ``predicate`` holds."""
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(predicate(path_str(p), x)), tree)


def check_same_structure(a: PyTree, b: PyTree, what_a: str = "a", what_b: str = "b") -> None:
    """Raise :class:`UserError` (a ``ValueError``) naming the first difference unless ``a`` and
    ``b`` match in structure and leaf shapes."""
    check_plain_pytree(a, what_a)
    check_plain_pytree(b, what_b)
    pa = dict(named_leaves(a))
    pb = dict(named_leaves(b))
    if pa.keys() != pb.keys():
        only_a = sorted(set(pa) - set(pb))
        only_b = sorted(set(pb) - set(pa))
        raise UserError(
            f"pytree structures differ: {what_a} and {what_b} do not have the same leaves "
            f"(only in {what_a}: {only_a[:5]}; only in {what_b}: {only_b[:5]})"
        )
    for name, x in pa.items():
        sx, sy = jnp.shape(x), jnp.shape(pb[name])
        if sx != sy:
            raise UserError(
                f"pytree leaf shapes differ at {name!r}: {what_a} has {sx}, {what_b} has {sy}"
            )


def check_plain_pytree(tree: PyTree, what: str) -> None:
    """Reject Flax NNX objects (``nnx.State``, ``nnx.Module``, ``nnx.Variable``): their leaf
    paths end in ``value``, not ``kernel``, so every predicate here would select nothing and
    masks would come back dense with 0.0 statistics. Checked by module name, so the core does
    not import flax."""
    def is_nnx(x: Any) -> bool:
        return type(x).__module__.startswith("flax.nnx")

    nnx_leaf = is_nnx(tree) or any(
        is_nnx(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=is_nnx))
    if nnx_leaf:
        raise UserError(
            f"{what} is a Flax NNX object ({type(tree).__name__}); pass the plain nested dict of "
            "arrays: `_, state = nnx.split(model, nnx.Param)` then "
            "`params = nnx.to_pure_dict(state)` (and `nnx.replace_by_pure_dict(state, params)` "
            "to put results back)")


def check_bool_leaves(mask: PyTree, what: str = "mask") -> None:
    """Raise :class:`UserError` unless every leaf of ``mask`` has dtype ``bool``.

    A float or int "mask" (0.3, 2, -1.0) would otherwise be read as "keep" wherever it is
    nonzero. Checks only dtypes, so it works on traced values inside ``jit``."""
    for name, m in named_leaves(mask):
        dtype = np.result_type(m) if not hasattr(m, "dtype") else m.dtype
        if dtype != np.bool_:
            raise UserError(
                f"{what} leaf {name!r} has dtype {dtype}; masks must be bool (True = keep). "
                f"Convert deliberately, e.g. `jax.tree.map(lambda m: m != 0, {what})`")


def check_finite_leaves(tree: PyTree, what: str, where: LeafPredicate | None = None) -> None:
    """Raise :class:`UserError` naming the first leaf (among those ``where`` selects) holding
    NaN or inf. Only concrete values are checked: inside ``jit`` the values are traced and this
    is a no-op, so callers that jit should check their inputs once, outside."""
    chosen = [(name, x) for name, x in named_leaves(tree) if where is None or where(name, x)]
    if not chosen or any(isinstance(x, jax.core.Tracer) for _, x in chosen):
        return
    # One small compiled program (a single reduction over all leaves) and one transfer for the
    # whole tree; eager per-leaf ops would each compile for their leaf's shape. Only a tree that
    # fails is searched leaf by leaf, for the message.
    if not bool(_all_finite([x for _, x in chosen])):
        name = next(n for n, x in chosen if not bool(jnp.all(jnp.isfinite(x))))
        raise UserError(f"{what} leaf {name!r} holds NaN or inf values; ranking them by "
                        "magnitude is meaningless (a diverged run? check its loss)")


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
    return jnp.all(jnp.isfinite(jnp.concatenate([jnp.ravel(x) for x in leaves])))


@jax.jit
def copy_arrays(tree: PyTree) -> PyTree:
    """A copy of every leaf in new buffers, placed like the originals: one compiled program per
    tree structure and shapes, where eager per-leaf copies compile once per leaf shape. Leaves
    that are not arrays come back as arrays."""
    return jax.tree.map(jnp.copy, tree)


def tree_size(tree: PyTree) -> int:
    """Total number of scalar entries in all leaves."""
    return sum(int(jnp.size(x)) for x in jax.tree_util.tree_leaves(tree))
