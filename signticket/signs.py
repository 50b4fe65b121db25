"""Signs: sign transfer between pytrees, and sign agreement / flips, overall and per layer."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from signticket.tree import (
    LeafPredicate,
    PyTree,
    any_of,
    check_bool_leaves,
    check_same_structure,
    is_bias,
    is_head,
    is_kernel,
    is_prunable,
    named_leaves,
    select,
)

#: Default leaves that receive the donor's signs in a ticket transfer (AWS): every conv/dense
#: kernel (the prunable ones and the unpruned head), and conv/dense biases.
TRANSFER_DEFAULT: LeafPredicate = any_of(is_kernel, is_bias, is_head)


def sign(x: jax.Array) -> jax.Array:
    """``+1`` where ``x >= 0``, ``-1`` elsewhere (zero counts as positive so magnitudes survive)."""
    return jnp.where(x >= 0, 1, -1).astype(jnp.asarray(x).dtype)


def sign_transfer(
    init: PyTree,
    donor: PyTree,
    mask: PyTree | None = None,
    which: LeafPredicate = TRANSFER_DEFAULT,
) -> PyTree:
    """``|init| * sign(donor) * mask`` on the leaves selected by ``which``; other leaves keep
    ``init``. With ``mask=None`` nothing is masked. Raises :class:`~signticket.errors.UserError`
    on mismatched structures or a mask with non-bool leaves."""
    check_same_structure(init, donor, "init", "donor")
    if mask is not None:
        check_same_structure(init, mask, "init", "mask")
        check_bool_leaves(mask)
    chosen = tuple(jax.tree.leaves(select(init, which)))
    return _sign_transfer(chosen, init, donor, mask)


# One program per architecture and leaf choice (``chosen``: a flag per leaf of ``init``), not
# one eager op per leaf shape. Every op is exact (abs, a sign, a select), so this is
# bit-identical to the eager form.
@functools.partial(jax.jit, static_argnums=0)
def _sign_transfer(chosen: tuple[bool, ...], init: PyTree, donor: PyTree, mask: PyTree | None
                   ) -> PyTree:
    leaves, treedef = jax.tree.flatten(init)
    donors = treedef.flatten_up_to(donor)
    masks = [None] * len(leaves) if mask is None else treedef.flatten_up_to(mask)
    out = []
    for c, a, d, m in zip(chosen, leaves, donors, masks, strict=True):
        x = jnp.abs(a) * sign(d) if c else a
        out.append(x if m is None else jnp.where(m, x, jnp.zeros_like(x)))
    return treedef.unflatten(out)


class SignStats(NamedTuple):
    """Fraction of compared entries, overall and per leaf path."""

    overall: jax.Array
    per_layer: dict[str, jax.Array]


def _compare(a, b, mask, where: LeafPredicate, differ: bool) -> SignStats:
    check_same_structure(a, b, "a", "b")
    if mask is not None:
        check_same_structure(a, mask, "a", "mask")
        check_bool_leaves(mask)
    mask_leaves = dict(named_leaves(mask)) if mask is not None else {}
    bl = dict(named_leaves(b))
    per_layer, hits, total = {}, 0, 0
    for name, x in named_leaves(a):
        if not where(name, x):
            continue
        m = jnp.asarray(mask_leaves.get(name, True), bool) & jnp.ones(jnp.shape(x), bool)
        same = sign(x) == sign(bl[name])
        h = jnp.sum(m & (~same if differ else same))
        n = jnp.sum(m)
        per_layer[name] = h / jnp.maximum(n, 1)
        hits, total = hits + h, total + n
    return SignStats(jnp.asarray(hits / jnp.maximum(total, 1), jnp.float32), per_layer)


def sign_agreement(
    a: PyTree, b: PyTree, mask: PyTree | None = None, where: LeafPredicate = is_prunable
) -> SignStats:
    """Fraction of (unmasked) entries where ``sign(a) == sign(b)``, overall and per layer."""
    return _compare(a, b, mask, where, differ=False)


def sign_flips(
    a: PyTree, b: PyTree, mask: PyTree | None = None, where: LeafPredicate = is_prunable
) -> SignStats:
    """Fraction of (unmasked) entries whose sign differs between ``a`` and ``b``."""
    return _compare(a, b, mask, where, differ=True)
