"""Permutation specs: which neuron permutation acts on which axis of every leaf.

A network's hidden units can be reordered without changing its function: permuting the output
axis of one layer (its kernel, bias and norm parameters / statistics) and the input axis of every
layer that reads it. A :class:`PermutationSpec` states this declaratively, as in Git Re-Basin,
but keyed by the Flax key path of each leaf (``("stage0_block1", "conv2", "kernel")``) and built
by walking the model's actual variables, so it can be checked against the tree it permutes.
Residual connections tie permutations simply by using the same permutation name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from signticket.tree import PyTree

#: A leaf's key path relative to its collection root, e.g. ``("fc0", "kernel")``.
KeyPath = tuple[str, ...]
#: One entry per axis of a leaf: the name of the permutation acting on it, or ``None``.
Axes = tuple[str | None, ...]
#: ``{permutation name: int array of its length}``; ``x_new[i] = x[perm[i]]`` along its axes.
Perms = dict[str, jax.Array]

#: Flax variable collections a spec covers (one namespace: their leaf names never collide).
COLLECTIONS = ("params", "batch_stats")


@dataclasses.dataclass(frozen=True)
class ActivationSite:
    """Where a permutation's units can be observed: the ``__call__`` output of the module at
    ``module`` (units on the last axis), passed through ReLU first when ``relu``."""

    module: KeyPath
    relu: bool = False


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
    """``axes[path][i]`` names the permutation acting on axis ``i`` of the leaf at ``path``.

    Attributes:
        axes: every covered leaf (params and batch statistics) -> one entry per axis.
        sizes: every permutation -> its length.
        activations: per permutation, the activation sites used by activation matching
            (optional; a shared name lists every site of a residual stream).
    """

    axes: Mapping[KeyPath, Axes]
    sizes: Mapping[str, int]
    activations: Mapping[str, tuple[ActivationSite, ...]] = dataclasses.field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        named = {p for axes in self.axes.values() for p in axes if p is not None}
        if named != set(self.sizes):
            raise ValueError(
                "PermutationSpec: sizes must list exactly the permutations named in axes "
                f"(named but unsized: {sorted(named - set(self.sizes))}; sized but unused: "
                f"{sorted(set(self.sizes) - named)})"
            )
        unknown = sorted(set(self.activations) - set(self.sizes))
        if unknown:
            raise ValueError(
                f"PermutationSpec: activation sites for unknown permutations {unknown}"
            )

    @property
    def names(self) -> list[str]:
        """Permutation names, sorted."""
        return sorted(self.sizes)

    @property
    def perm_to_axes(self) -> dict[str, list[tuple[KeyPath, int]]]:
        """Every permutation -> the ``(leaf path, axis)`` pairs it acts on."""
        out: dict[str, list[tuple[KeyPath, int]]] = {p: [] for p in self.names}
        for path, axes in self.axes.items():
            for i, p in enumerate(axes):
                if p is not None:
                    out[p].append((path, i))
        return out

    @classmethod
    def from_shapes(
        cls,
        axes: Mapping[KeyPath, Axes],
        shapes: Mapping[KeyPath, tuple[int, ...]],
        activations: Mapping[str, Iterable[ActivationSite]] | None = None,
    ) -> PermutationSpec:
        """A spec whose permutation sizes are read from the leaf ``shapes``; raises
        ``ValueError`` if a leaf has the wrong number of axes or two leaves disagree on the
        size of one permutation."""
        sizes: dict[str, int] = {}
        where: dict[str, str] = {}
        for path, ax in axes.items():
            if path not in shapes:
                raise ValueError(f"PermutationSpec: no shape given for leaf {fmt(path)!r}")
            shape = tuple(shapes[path])
            _check_rank(path, ax, shape)
            for i, p in enumerate(ax):
                if p is None:
                    continue
                if p in sizes and sizes[p] != shape[i]:
                    raise ValueError(
                        f"PermutationSpec: permutation {p!r} has size {sizes[p]} at {where[p]} "
                        f"but axis {i} of {fmt(path)!r} has size {shape[i]}"
                    )
                sizes.setdefault(p, shape[i])
                where.setdefault(p, f"{fmt(path)!r} axis {i}")
        acts = {p: tuple(s) for p, s in (activations or {}).items()}
        return cls(dict(axes), sizes, acts)

    def check_tree(self, tree: PyTree, what: str = "tree") -> None:
        """Raise ``ValueError`` unless every leaf of ``tree`` (a params / mask / batch_stats
        tree) is covered, with one entry per axis and the spec's size on every permuted axis."""
        for path, leaf in key_paths(tree):
            self.check_leaf(path, shape_of(leaf), what)

    def check_leaf(self, path: KeyPath, shape: tuple[int, ...], what: str = "tree") -> Axes:
        """The axes of the leaf at ``path``, after checking coverage, rank and sizes."""
        if path not in self.axes:
            hint = ""
            if path and path[0] in COLLECTIONS:
                hint = f" (apply the spec to variables[{path[0]!r}], not to the variables dict)"
            raise ValueError(
                f"leaf {fmt(path)!r} of the {what} is not covered by the permutation spec{hint}"
            )
        ax = self.axes[path]
        _check_rank(path, ax, shape)
        for i, p in enumerate(ax):
            if p is not None and shape[i] != self.sizes[p]:
                raise ValueError(
                    f"axis {i} of leaf {fmt(path)!r} has size {shape[i]}, but permutation {p!r} "
                    f"of the spec has size {self.sizes[p]} (a spec for a different width?)"
                )
        return ax


def _check_rank(path: KeyPath, axes: Axes, shape: tuple[int, ...]) -> None:
    if len(axes) != len(shape):
        raise ValueError(
            f"PermutationSpec: leaf {fmt(path)!r} has {len(shape)} axes {shape} but the spec "
            f"names {len(axes)}: {axes}"
        )


def fmt(path: KeyPath) -> str:
    """``"a/b/kernel"`` for messages."""
    return "/".join(path)


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def key_paths(tree: PyTree) -> list[tuple[KeyPath, Any]]:
    """``[(key path as a tuple of names, leaf), ...]`` in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(tuple(_key_name(k) for k in p), leaf) for p, leaf in flat]


def shape_of(leaf: Any) -> tuple[int, ...]:
    """The shape of an array, scalar or ``jax.ShapeDtypeStruct``."""
    return tuple(leaf.shape) if hasattr(leaf, "shape") else tuple(np.shape(leaf))


def collection_leaves(variables: Mapping[str, PyTree]) -> dict[KeyPath, tuple[int, ...]]:
    """Shapes of the params and batch-statistics leaves of a Flax ``variables`` dict (or of a
    bare params tree), keyed by their path relative to the collection root."""
    if "params" in variables:
        trees = [variables[c] for c in COLLECTIONS if c in variables]
    else:
        trees = [variables]
    shapes: dict[KeyPath, tuple[int, ...]] = {}
    for tree in trees:
        for path, leaf in key_paths(tree):
            shapes[path] = shape_of(leaf)
    return shapes


#: ``rule(path, shape) -> axes`` for one leaf; raises ``ValueError`` for an unknown leaf.
AxesRule = Callable[[KeyPath, tuple[int, ...]], Axes]


def spec_from_variables(
    variables: Mapping[str, PyTree],
    rule: AxesRule,
    activations: Mapping[str, Iterable[ActivationSite]] | None = None,
) -> PermutationSpec:
    """Walk the key paths of ``variables`` (params and batch_stats) and ask ``rule`` for the
    axes of every leaf; sizes come from the shapes. Leaves can be arrays or
    ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of an init), so no weights are needed."""
    shapes = collection_leaves(variables)
    axes = {path: tuple(rule(path, shape)) for path, shape in shapes.items()}
    return PermutationSpec.from_shapes(axes, shapes, activations)
