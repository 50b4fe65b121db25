"""AC/DC (Peste, Iofinova, Vladu, Alistarh, NeurIPS 2021): alternating compressed / decompressed
training, as an optax transform (:func:`signticket.dst.mask_updater`), with or without Sign-In.

Training starts dense (warm-up), then alternates *compressed* phases, in which the network is
pruned to the target sparsity by magnitude at the phase's first step and trained sparse, with
*decompressed* phases, in which the mask is dense again and the pruned weights regrow from 0;
a final, longer compressed phase ends it, so the result is sparse. The phase plan is a tuple of
per-epoch flags (:func:`acdc_phases`); the mask changes only at phase boundaries.

With Sign-In as the inner transform the weights that come back in a decompressed phase restart at
``(m, w) = (sqrt(beta), 0)`` (theta = 0), as every regrown weight does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from signticket.dst import mask_updater, topk_mask
from signticket.tree import LeafPredicate, PyTree, is_prunable, named_leaves


def acdc_phases(epochs: int, warmup: float = 0.1, phase: float = 0.05, final: float = 0.1
                ) -> tuple[bool, ...]:
    """Per-epoch ``sparse`` flags: dense warm-up (``warmup`` of the epochs), then compressed and
    decompressed phases of ``phase`` of the epochs each (compressed first), and a final
    compressed phase of at least ``final`` of the epochs (it absorbs the remainder so it always
    ends compressed). The AC/DC paper's ImageNet plan (100 epochs: 10 dense, 5/5 alternation,
    the last 10 compressed) is the default, scaled to ``epochs``; at least one epoch each."""
    if epochs < 3:
        raise ValueError(f"acdc_phases: need at least 3 epochs, got {epochs}")
    w = max(1, round(warmup * epochs))
    p = max(1, round(phase * epochs))
    f = max(1, round(final * epochs))
    flags = [False] * w
    sparse = True
    while len(flags) + p <= epochs - f:
        flags += [sparse] * p
        sparse = not sparse
    flags += [True] * (epochs - len(flags))
    return tuple(flags)


def magnitude_mask(params: PyTree, sparsity: float, scope: Literal["global", "layerwise"],
                   prunable: LeafPredicate = is_prunable) -> PyTree:
    """Keep the ``round((1 - sparsity) * n)`` largest-|theta| prunable weights, over all prunable
    layers together (``global``) or in each (``layerwise``); other leaves dense. Jit-able (the
    counts depend on shapes only)."""
    leaves, treedef = jax.tree.flatten(params)
    idx = [i for i, (n, x) in enumerate(named_leaves(params)) if prunable(n, x)]
    out = [jnp.ones(jnp.shape(x), bool) for x in leaves]
    if scope == "layerwise":
        for i in idx:
            out[i] = topk_mask(jnp.abs(leaves[i]), round((1 - sparsity) * leaves[i].size))
    elif scope == "global":
        scores = jnp.concatenate([jnp.abs(leaves[i]).ravel() for i in idx])
        kept = topk_mask(scores, round((1 - sparsity) * scores.size))
        off = 0
        for i in idx:
            out[i] = kept[off:off + leaves[i].size].reshape(jnp.shape(leaves[i]))
            off += leaves[i].size
    else:
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    return jax.tree.unflatten(treedef, out)


def acdc(
    inner: optax.GradientTransformation,
    *,
    sparsity: float,
    steps_per_epoch: int,
    sparse_epochs: Sequence[bool],
    scope: Literal["global", "layerwise"] = "global",
    prunable: LeafPredicate = is_prunable,
) -> optax.GradientTransformationExtraArgs:
    """AC/DC around the mask-holding ``inner`` (``optim.masked_updates(sgd)`` or
    ``sign_in(sgd)``; start it dense): at the first step of every epoch whose phase differs from
    the previous epoch's, the mask becomes the magnitude top-k (:func:`magnitude_mask`) entering
    a compressed phase, or dense entering a decompressed one. Epochs past the plan stay in its
    last phase."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"acdc: sparsity must lie in [0, 1), got {sparsity}")
    if steps_per_epoch < 1 or not len(sparse_epochs):
        raise ValueError("acdc: steps_per_epoch must be >= 1 and sparse_epochs non-empty")
    flags = jnp.asarray(tuple(bool(f) for f in sparse_epochs))

    def sparse_at(t):
        e = jnp.clip(t // steps_per_epoch, 0, flags.size - 1)
        return jnp.where(t < 0, False, flags[e])

    def schedule(t):
        return sparse_at(t) != sparse_at(t - 1)

    def rule(t, params, grads, mask):
        del grads, mask
        pruned = magnitude_mask(params, sparsity, scope, prunable)
        new = jax.tree.map(lambda m: m | ~sparse_at(t), pruned)
        return new, new

    return mask_updater(inner, rule, schedule)
