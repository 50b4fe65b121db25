"""Weight matching (Git Re-Basin, Ainsworth et al. 2023, Alg. 1): align model B's units to A's.

Maximise ``sum_l <W_l^A, pi(W_l^B)>`` over the permutations by coordinate descent: one
permutation at a time (in random order), holding the others fixed, the objective is linear in
that permutation, ``<C_p, P>`` with ``C_p[i, j] = sum over leaves touching p of
<A's unit i, B's unit j (other axes permuted)>``, a linear assignment problem. Sweeps repeat
until one changes nothing. A permutation whose cost matrix depends on no permutation that changed
since its last visit is still optimal and is skipped (its assignment problem would return the
same answer): later sweeps solve only what moved around them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from signticket.rebasin.apply import permute_leaf
from signticket.rebasin.perms import check_perms, identity_perms
from signticket.rebasin.spec import KeyPath, Perms, PermutationSpec, key_paths
from signticket.tree import PyTree

log = logging.getLogger(__name__)


def check_matchable(
    spec: PermutationSpec, tree_a: PyTree, tree_b: PyTree, what: str = "params"
) -> None:
    """Raise ``ValueError`` unless the two trees have the same leaves and shapes (same
    architecture and width) and the spec covers them."""
    a = {path: jnp.shape(x) for path, x in key_paths(tree_a)}
    b = {path: jnp.shape(x) for path, x in key_paths(tree_b)}
    if a.keys() != b.keys():
        only_a = sorted("/".join(p) for p in set(a) - set(b))[:5]
        only_b = sorted("/".join(p) for p in set(b) - set(a))[:5]
        raise ValueError(
            f"cannot match models of different architectures: {what} of A and B have different "
            f"leaves (only in A: {only_a}; only in B: {only_b})"
        )
    for path, shape in a.items():
        if shape != b[path]:
            raise ValueError(
                f"cannot match models of different widths: {'/'.join(path)!r} has shape {shape} "
                f"in A but {b[path]} in B"
            )
    spec.check_tree(tree_a, f"{what} of A")


@functools.lru_cache(maxsize=256)
def _compiled_cost(n: int, layout: tuple[tuple[KeyPath, int, tuple], ...]) -> Callable:
    """Jit-compiled ``C_p(leaves_a, leaves_b, perms)`` for the leaves ``layout`` lists (path,
    the axis ``p`` permutes, every axis's permutation name). Cached on that layout, so matching
    the same architecture again (every seed, every IMP round) reuses the compiled programs
    instead of rebuilding and recompiling a dozen of them per call."""

    def cost(leaves_a, leaves_b, perms):
        c = jnp.zeros((n, n), jnp.float32)
        for (_, axis, axes), wa, wb in zip(layout, leaves_a, leaves_b, strict=True):
            wb = permute_leaf(wb, axes, perms, except_axis=axis)
            wa = jnp.moveaxis(wa, axis, 0).reshape(n, -1).astype(jnp.float32)
            wb = jnp.moveaxis(wb, axis, 0).reshape(n, -1).astype(jnp.float32)
            # Full f32 matmuls: TF32/bf16 defaults on accelerators could flip near-ties.
            c = c + jnp.matmul(wa, wb.T, precision=jax.lax.Precision.HIGHEST)
        return c

    return jax.jit(cost)


def _cost_fn(spec: PermutationSpec, p: str, touching: list[tuple[KeyPath, int]]) -> Callable:
    """``C_p``; only the leaves touching ``p`` go in, and only B's *other* permuted axes are
    gathered (nothing else is rebuilt)."""
    layout = tuple((path, axis, tuple(spec.axes[path])) for path, axis in touching)
    return _compiled_cost(spec.sizes[p], layout)


def weight_matching(
    key: jax.Array,
    spec: PermutationSpec,
    params_a: PyTree,
    params_b: PyTree,
    *,
    max_iter: int = 100,
    init_perms: Perms | None = None,
) -> Perms:
    """Permutations ``pi`` with ``apply_permutation(spec, pi, params_b) ≈ params_a``.

    Coordinate descent: each sweep visits the permutations in a random order (from ``key``)
    and replaces each by ``argmax_P <C_p, P>`` (``scipy.optimize.linear_sum_assignment``,
    maximize); stops after a sweep that improves nothing or after ``max_iter`` sweeps.

    Raises:
        ValueError: the two models differ in architecture or width, or the spec does not fit.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    check_matchable(spec, params_a, params_b)
    leaves_a = dict(key_paths(params_a))
    leaves_b = dict(key_paths(params_b))
    perms = {p: np.asarray(v) for p, v in (init_perms or identity_perms(spec)).items()}
    check_perms(spec, perms)

    # Only params take part (batch statistics are not weights); a permutation that touches no
    # params leaf (impossible for the built-in specs) keeps its initial value.
    touching = {
        p: [(path, ax) for path, ax in pairs if path in leaves_a]
        for p, pairs in spec.perm_to_axes.items()
    }
    names = [p for p in spec.names if touching[p]]
    costs = {p: _cost_fn(spec, p, touching[p]) for p in names}
    # C_p reads the permutations on the other axes of the leaves touching p (p itself too, if a
    # leaf carries p on two axes); ``version`` counts each permutation's changes.
    depends = {
        p: sorted({q for path, axis in touching[p] for i, q in enumerate(spec.axes[path])
                   if q is not None and i != axis})
        for p in names
    }
    version = dict.fromkeys(spec.names, 0)
    solved_at: dict[str, tuple[int, ...]] = {}

    def cost_matrix(p: str) -> np.ndarray:
        la = [leaves_a[path] for path, _ in touching[p]]
        lb = [leaves_b[path] for path, _ in touching[p]]
        needed = {q for path, _ in touching[p] for q in spec.axes[path] if q is not None}
        sub = {q: jnp.asarray(perms[q]) for q in needed}
        return np.asarray(costs[p](la, lb, sub), dtype=np.float64)

    for sweep in range(max_iter):
        progress = False
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, sweep), len(names)))
        for i in order:
            p = names[int(i)]
            stamp = tuple(version[q] for q in depends[p])
            if solved_at.get(p) == stamp:
                continue  # same C_p as at p's last visit: p is already its best assignment
            solved_at[p] = stamp
            c = cost_matrix(p)
            rows, cols = linear_sum_assignment(c, maximize=True)
            old = c[np.arange(len(cols)), perms[p]].sum()
            new = c[rows, cols].sum()
            # Relative tolerance: float32 sums of near-equal assignments must not count as
            # progress, or sweeps could cycle between ties.
            if new > old + 1e-7 * max(1.0, abs(old)):
                perms[p] = cols
                version[p] += 1
                progress = True
        log.debug("weight matching sweep %d: progress=%s", sweep, progress)
        if not progress:
            break
    return {p: jnp.asarray(v, jnp.int32) for p, v in perms.items()}
