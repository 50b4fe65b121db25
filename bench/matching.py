"""Weight matching on ResNet-20x4: ``signticket.rebasin.weight_matching`` vs a naive loop.

What is measured: the wall time of aligning model B's units to model A's (two independent
random inits of ``resnet20``, width 4; matching trained models costs the same per sweep), from
the call to the returned permutations, and the number of sweeps each needed.

* signticket: one jitted cost-matrix function per permutation, fed only the leaves that touch
  it, gathering only B's *other* permuted axes; a permutation none of whose dependencies
  changed since its last visit is skipped (it would be solved to the same answer). Its first
  call includes compiling those functions; a second call (the figure) compiles again only
  if JAX cannot reuse them.
* naive (:func:`naive_weight_matching`), written like Git Re-Basin's loop: for every
  permutation, in a random order per sweep, rebuild *all* of B's params with every current
  permutation applied (a full permutation of the whole tree in numpy, the permutation being
  solved held at the identity), build the cost matrix from the leaves touching it (numpy
  float32 matmuls) and solve it with ``scipy.optimize.linear_sum_assignment``.

Both use the same sweep order (``jax.random.permutation(fold_in(key, sweep))``), the same
acceptance rule (strict improvement beyond a 1e-7 relative tolerance) and ``max_iter``, and
stop after a sweep that improves nothing; both objectives ``sum_l <W_A, pi(W_B)>`` are reported.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

from bench import timing, workloads
from signticket import models, rebasin
from signticket.rebasin import KeyPath, PermutationSpec
from signticket.tree import PyTree


def _flat(tree: PyTree) -> dict[KeyPath, np.ndarray]:
    return {path: np.asarray(x) for path, x in rebasin.key_paths(tree)}


def permute_tree_np(spec: PermutationSpec, perms: dict[str, np.ndarray],
                    leaves: dict[KeyPath, np.ndarray]) -> dict[KeyPath, np.ndarray]:
    """Every leaf gathered along every axis the spec names (numpy ``take``)."""
    out = {}
    for path, x in leaves.items():
        for i, p in enumerate(spec.axes[path]):
            if p is not None:
                x = np.take(x, perms[p], axis=i)
        out[path] = x
    return out


def objective(spec: PermutationSpec, perms: dict[str, Any], params_a: PyTree,
              params_b: PyTree) -> float:
    """``sum_l <W_A, pi(W_B)>`` over the params leaves, in float64."""
    a = _flat(params_a)
    b = permute_tree_np(spec, {p: np.asarray(v) for p, v in perms.items()}, _flat(params_b))
    return float(sum(np.vdot(a[k].astype(np.float64), b[k].astype(np.float64)) for k in a))


def naive_weight_matching(key: jax.Array, spec: PermutationSpec, params_a: PyTree,
                          params_b: PyTree, *, max_iter: int = 100) -> tuple[dict, int]:
    """Git Re-Basin-style weight matching with a full rebuild of B per step; returns
    ``(perms, sweeps)``."""
    a, b = _flat(params_a), _flat(params_b)
    perms = {p: np.arange(n) for p, n in spec.sizes.items()}
    touching = {p: [(path, ax) for path, ax in pairs if path in a]
                for p, pairs in spec.perm_to_axes.items()}
    names = [p for p in spec.names if touching[p]]
    sweeps = 0
    for sweep in range(max_iter):
        sweeps = sweep + 1
        progress = False
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, sweep), len(names)))
        for i in order:
            p = names[int(i)]
            n = spec.sizes[p]
            permuted_b = permute_tree_np(spec, {**perms, p: np.arange(n)}, b)
            c = np.zeros((n, n), np.float32)
            for path, axis in touching[p]:
                wa = np.moveaxis(a[path], axis, 0).reshape(n, -1)
                wb = np.moveaxis(permuted_b[path], axis, 0).reshape(n, -1)
                c += wa @ wb.T
            c = c.astype(np.float64)
            rows, cols = linear_sum_assignment(c, maximize=True)
            old = c[np.arange(n), perms[p]].sum()
            new = c[rows, cols].sum()
            if new > old + 1e-7 * max(1.0, abs(old)):
                perms[p] = cols
                progress = True
        if not progress:
            break
    return perms, sweeps


class _SweepCounter(logging.Handler):
    """Counts the per-sweep debug records of :func:`signticket.rebasin.weight_matching`."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.sweeps = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "sweep" in record.getMessage():
            self.sweeps += 1


def _signticket_sweeps(key, spec, pa, pb, max_iter) -> tuple[dict, int, float, dict]:
    log = logging.getLogger("signticket.rebasin.weight_matching")
    counter, level, propagate = _SweepCounter(), log.level, log.propagate
    log.addHandler(counter)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        with timing.compile_seconds() as compiled:
            perms, seconds = timing.timed(rebasin.weight_matching, key, spec, pa, pb,
                                          max_iter=max_iter)
    finally:
        log.removeHandler(counter)
        log.setLevel(level)
        log.propagate = propagate
    return perms, counter.sweeps, seconds, compiled


def run(tiny: bool = False, max_iter: int = 100) -> dict[str, Any]:
    """Seconds and sweeps of both implementations and the objectives they reach."""
    if tiny:
        model, name = workloads.train_workload("resnet20", tiny=True).model, "tiny cifar_resnet"
    else:
        model, name = models.get("resnet20", num_classes=10, width=4), "resnet20 width 4"
    va = workloads.init_variables(model, (32, 32, 3), 0)
    vb = workloads.init_variables(model, (32, 32, 3), 1)
    spec = rebasin.spec_for("resnet20", va)
    key = jax.random.PRNGKey(0)
    pa, pb = va["params"], vb["params"]

    perms_first, sweeps, first_s, compiled_first = _signticket_sweeps(key, spec, pa, pb, max_iter)
    perms, sweeps_again, second_s, compiled = _signticket_sweeps(key, spec, pa, pb, max_iter)
    t0 = time.perf_counter()
    naive_perms, naive_sweeps = naive_weight_matching(key, spec, pa, pb, max_iter=max_iter)
    naive_s = time.perf_counter() - t0
    identity = {p: np.arange(n) for p, n in spec.sizes.items()}
    same = all(np.array_equal(np.asarray(perms[p]), naive_perms[p]) for p in spec.names)
    return {
        "model": name,
        "param_count": workloads.param_count(pa),
        "permutations": len(spec.names),
        "max_iter": max_iter,
        "signticket": {"first_call_s": round(first_s, 3), "second_call_s": round(second_s, 3),
                       "compile_s_in_first_call": round(compiled_first["seconds"], 3),
                       "compile_s_in_second_call": round(compiled["seconds"], 3),
                       "compilations_in_second_call": compiled["count"],
                       "sweeps": sweeps, "sweeps_second_call": sweeps_again,
                       "objective": objective(spec, perms, pa, pb),
                       "same_result_both_calls": all(
                           np.array_equal(np.asarray(perms[p]), np.asarray(perms_first[p]))
                           for p in spec.names)},
        "naive": {"seconds": round(naive_s, 3), "sweeps": naive_sweeps,
                  "objective": objective(spec, naive_perms, pa, pb)},
        "objective_identity": objective(spec, identity, pa, pb),
        "same_permutations": same,
        "speedup": round(naive_s / second_s, 3),
        "speedup_first_call": round(naive_s / first_s, 3),
    }
