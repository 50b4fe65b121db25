"""Activation matching (Git Re-Basin Sec. 3.1; what the sparse-rebasin code uses): pair B's
units with A's by the correlation of their activations on the same inputs.

For permutation ``p`` with sites ``s`` (module outputs, post-ReLU), over all positions
(N, H, W) of the data: ``corr_p[i, j] = sum_s corr(a_s[:, i], b_s[:, j])`` and
``pi_p = argmax_P <corr_p, P>`` (one linear assignment per permutation, no iteration).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from signticket.rebasin.spec import ActivationSite, Perms, PermutationSpec, fmt
from signticket.rebasin.weight_matching import check_matchable

if TYPE_CHECKING:  # the core imports without flax: a model is anything with Flax's `apply`
    import flax.linen as nn
from signticket.tree import PyTree

# corr = cov / (sd_a sd_b + 1e-4), as both sparse-rebasin matchers (act_matching_resnet20.py
# line 66, act_matching_vgg11.py line 61); dead units (zero variance) correlate with nothing.
_EPS = 1e-4


def _sites(spec: PermutationSpec) -> dict[str, tuple[ActivationSite, ...]]:
    missing = [p for p in spec.names if not spec.activations.get(p)]
    if missing:
        raise ValueError(
            f"activation matching: the spec names no activation site for permutations {missing}"
        )
    return {p: tuple(spec.activations[p]) for p in spec.names}


def _variables(variables: Mapping[str, PyTree]) -> dict[str, PyTree]:
    if "params" not in variables:
        raise ValueError(
            "activation matching needs Flax variables {'params': ..., 'batch_stats': ...}, "
            f"got a mapping with keys {sorted(variables)[:5]}"
        )
    return {k: v for k, v in variables.items() if k in ("params", "batch_stats") and v}


def _batch_sums(model: nn.Module, sites: dict[str, tuple[ActivationSite, ...]]):
    """Jit-compiled per-batch sufficient statistics of every site's (A, B) activations."""
    wanted = {s.module for ss in sites.values() for s in ss}

    def capture(mdl: nn.Module, method: str) -> bool:
        return method == "__call__" and tuple(mdl.path) in wanted

    def activations(variables, x):
        _, state = model.apply(
            variables, x, train=False, capture_intermediates=capture, mutable=["intermediates"]
        )
        out = {}
        for module in wanted:
            node = state["intermediates"]
            for name in module:
                if name not in node:
                    raise ValueError(f"activation site {fmt(module)!r} produced no output")
                node = node[name]
            out[module] = node["__call__"][0]
        return out

    def sums(vars_a, vars_b, x):
        acts_a, acts_b = activations(vars_a, x), activations(vars_b, x)
        stats = {}
        for p, ss in sites.items():
            for k, s in enumerate(ss):
                a, b = acts_a[s.module], acts_b[s.module]
                if s.relu:
                    a, b = jax.nn.relu(a), jax.nn.relu(b)
                # Units on the last axis; every other axis (N, H, W) is a sample.
                a = a.reshape(-1, a.shape[-1]).astype(jnp.float32)
                b = b.reshape(-1, b.shape[-1]).astype(jnp.float32)
                stats[(p, k)] = (
                    jnp.asarray(a.shape[0], jnp.float32),
                    a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0),
                    jnp.matmul(a.T, b, precision=jax.lax.Precision.HIGHEST),
                )
        return stats

    return jax.jit(sums)


def activation_stats(
    spec: PermutationSpec,
    model: nn.Module,
    variables_a: Mapping[str, PyTree],
    variables_b: Mapping[str, PyTree],
    batches: Iterable[jax.Array],
) -> dict[str, np.ndarray]:
    """``{p: corr_p}``: correlations between A's and B's units of every permutation, summed
    over its activation sites, over the model inputs in ``batches`` (eval mode)."""
    va, vb = _variables(variables_a), _variables(variables_b)
    for c in va.keys() | vb.keys():
        check_matchable(spec, va.get(c, {}), vb.get(c, {}), c)
    sites = _sites(spec)
    fn = _batch_sums(model, sites)
    totals: dict | None = None
    for x in batches:
        # Accumulate across batches in float64 on the host: E[ab] - E[a]E[b] cancels.
        stats = jax.tree.map(lambda v: np.asarray(v, np.float64), fn(va, vb, x))
        totals = stats if totals is None else jax.tree.map(np.add, totals, stats)
    if totals is None:
        raise ValueError("activation matching: no batches")
    corr = {p: np.zeros((spec.sizes[p], spec.sizes[p])) for p in spec.names}
    for (p, _), (n, sa, sb, saa, sbb, sab) in totals.items():
        if sa.shape[0] != spec.sizes[p]:
            raise ValueError(
                f"activation site of {p!r} has {sa.shape[0]} units, the spec says {spec.sizes[p]}"
            )
        ma, mb = sa / n, sb / n
        cov = sab / n - np.outer(ma, mb)
        sd_a = np.sqrt(np.maximum(saa / n - ma**2, 0.0))
        sd_b = np.sqrt(np.maximum(sbb / n - mb**2, 0.0))
        corr[p] += cov / (np.outer(sd_a, sd_b) + _EPS)
    return corr


def activation_matching(
    spec: PermutationSpec,
    model: nn.Module,
    variables_a: Mapping[str, PyTree],
    variables_b: Mapping[str, PyTree],
    batches: Iterable[jax.Array],
) -> Perms:
    """Permutations ``pi`` with ``apply_permutation(spec, pi, B) ≈ A`` from activation
    correlations on ``batches`` (preprocessed model inputs; BN in eval mode).

    Raises:
        ValueError: the models differ in architecture or width, or the spec has no activation
            sites for some permutation.
    """
    corr = activation_stats(spec, model, variables_a, variables_b, batches)
    perms = {}
    for p, c in corr.items():
        _, cols = linear_sum_assignment(c, maximize=True)
        perms[p] = jnp.asarray(cols, jnp.int32)
    return perms
