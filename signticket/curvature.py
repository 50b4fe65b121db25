"""Curvature: the dominant Hessian eigenvalue of a loss by power iteration on Hessian-vector
products (never forming the Hessian), optionally restricted to the unmasked weights."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from signticket.tree import PyTree, check_same_structure


class HessianEig(NamedTuple):
    """``value``: Rayleigh quotient ``v^T H v`` at the final unit vector ``vector``;
    ``residual``: ``|H v - value v| / |value|`` (small when the iteration has converged)."""

    value: jax.Array
    vector: PyTree
    residual: jax.Array


def hvp(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree) -> PyTree:
    """``H v`` with ``H`` the Hessian of ``loss_fn`` at ``params`` (forward-over-reverse)."""
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _vdot(a: PyTree, b: PyTree) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _scale(a: PyTree, s: jax.Array) -> PyTree:
    return jax.tree.map(lambda x: x * s.astype(x.dtype), a)


def _standard_normal_like(key: jax.Array, tree: PyTree) -> PyTree:
    """A standard normal draw shaped like ``tree``: one draw of all its elements, cut into its
    leaves. (A draw per leaf puts one random-number kernel per leaf shape into the program,
    about half of its compile: ``docs/performance.md``.)"""
    leaves, treedef = jax.tree.flatten(tree)
    ends = list(itertools.accumulate(int(jnp.size(x)) for x in leaves))
    flat = jax.random.normal(key, (ends[-1] if ends else 0,), jnp.float32)
    parts = jnp.split(flat, ends[:-1]) if leaves else []
    return jax.tree.unflatten(treedef, [p.reshape(jnp.shape(x)).astype(jnp.result_type(x))
                                        for p, x in zip(parts, leaves, strict=True)])


def top_hessian_eigenvalue(
    loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    key: jax.Array,
    *,
    mask: PyTree | None = None,
    num_iters: int = 20,
) -> HessianEig:
    """Dominant eigenvalue of the Hessian of ``loss_fn`` at ``params`` by power iteration:
    ``v <- M H M v / |M H M v|`` from ``M v0`` normalized, ``v0`` one standard normal draw
    of all the params' elements (``key``), ``value = v^T H v``.

    With ``mask`` the Hessian is restricted to the unmasked coordinates (pruned weights are
    not free parameters of a sparse network). Power iteration finds the eigenvalue of largest
    magnitude, which is the largest one whenever the Hessian is not dominated by negative
    curvature (the usual case near a trained minimum); check ``residual`` for convergence.
    Jit-able (``loss_fn`` is closed over); cost: ``num_iters + 1`` HVPs.
    """
    if int(num_iters) < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    if mask is not None:
        check_same_structure(params, mask, "params", "mask")
        mask = jax.tree.map(lambda m: jnp.asarray(m, bool), mask)

    def restrict(t):
        return t if mask is None else jax.tree.map(
            lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), t, mask
        )

    def normalize(t):
        return _scale(t, 1.0 / jnp.maximum(jnp.sqrt(_vdot(t, t)), 1e-30))

    v = normalize(restrict(_standard_normal_like(key, params)))
    op = lambda t: restrict(hvp(loss_fn, params, t))
    v = jax.lax.fori_loop(0, int(num_iters), lambda _, t: normalize(op(t)), v)
    hv = op(v)
    value = _vdot(v, hv)
    diff = jax.tree.map(lambda a, b: a - value.astype(a.dtype) * b, hv, v)
    residual = jnp.sqrt(_vdot(diff, diff)) / jnp.maximum(jnp.abs(value), 1e-30)
    return HessianEig(value, v, residual)
