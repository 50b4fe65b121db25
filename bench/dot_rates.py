"""GFLOP/s of the permuted-masks MLP's first-layer matmuls on their own, and the machine's.

    python -m bench.dot_rates                 # batch 128, 1 and 4 seeds
    python -m bench.dot_rates --tiny          # smoke run (CI): tiny sizes, no figures claimed

Why: issue 18's goal 4 asks N seeds of the MLP (784-128-128-128-10) vmapped to train >= 1.5x
the sequential rate, which needs one seed's step to leave the cores idle. Two thirds of a
seed-step's 77.5 MFLOP of matmuls are its first layer: the forward ``x @ W`` (batch x 784 @
784 x 128) and the kernel gradient ``x^T dy`` (a contraction over the batch). Vmapped seeds
that share a batch, as a permuted-masks cell's runs do, turn both into one matmul with the
seeds' 128 columns side by side (784 x 512 for 4 seeds).

What is timed: each of those matmuls for 1 and 4 seeds, jitted on its own (a) with the XLA
options the engine gives the MLP (:func:`signticket.cpu_tuning.program_options`: dots off
YNNPACK, on XLA's own kernels), (b) under the process's flags alone (YNNPACK dots), and
(c) ``torch.matmul`` on the same shapes (torch's BLAS, when torch is installed, in a process
of its own); then a 2048^3 matmul (XLA and torch) for the practical peak of the machine.
Median over repeats (:func:`bench.timing.time_calls`). Writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from bench import report, timing, torch_models
from signticket import cpu_tuning

#: the MLP's input and hidden widths (``permuted_fmnist_mlp.py``)
IN_FEATURES, HIDDEN = 784, 128
#: an MLP-like params tree: what program_options is asked about (no conv kernel)
_MLP_VARIABLES = {"params": {"fc0": {"kernel": jax.ShapeDtypeStruct((IN_FEATURES, HIDDEN),
                                                                    jnp.float32)}}}


def shapes(batch: int, seeds: int) -> dict[str, tuple[tuple[int, int], tuple[int, int], bool]]:
    """``name -> (lhs shape, rhs shape, lhs transposed)`` of the first layer's matmuls."""
    cols = HIDDEN * seeds
    return {f"forward x@W, {seeds} seed{'s' * (seeds > 1)}": ((batch, IN_FEATURES),
                                                              (IN_FEATURES, cols), False),
            f"kernel grad x^T dy, {seeds} seed{'s' * (seeds > 1)}": ((batch, IN_FEATURES),
                                                                    (batch, cols), True)}


def flops(lhs: tuple[int, int], rhs: tuple[int, int], transposed: bool) -> int:
    """Multiply-adds x 2 of ``lhs @ rhs`` (``lhs^T @ rhs`` if ``transposed``)."""
    m, k = (lhs[1], lhs[0]) if transposed else lhs
    return 2 * m * k * rhs[1]


def _gflops(call: Callable[[], Any], n_flops: int, repeats: int, number: int) -> float:
    t = timing.time_calls(call, repeats=repeats, number=number, warmup=2)
    return round(t.rate(n_flops) / 1e9, 1)


def _todo(batch: int, seeds_list: tuple[int, ...],
          peak_n: int) -> dict[str, tuple[tuple[int, int], tuple[int, int], bool]]:
    todo = {name: spec for s in seeds_list for name, spec in shapes(batch, s).items()}
    todo[f"peak {peak_n}^3"] = ((peak_n, peak_n), (peak_n, peak_n), False)
    return todo


def torch_rates(batch: int, seeds_list: tuple[int, ...], peak_n: int, *, repeats: int,
                number: int) -> dict[str, float]:
    """``torch.matmul``'s GFLOP/s on each matmul of :func:`rates` (random operands)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, (lhs_shape, rhs_shape, transposed) in _todo(batch, seeds_list, peak_n).items():
        lhs = torch.randn(lhs_shape, generator=gen)
        rhs = torch.randn(rhs_shape, generator=gen)
        out[name] = _gflops(functools.partial(torch.matmul, lhs.T if transposed else lhs, rhs),
                            flops(lhs_shape, rhs_shape, transposed), repeats, number)
    return out


def rates(batch: int, seeds_list: tuple[int, ...], peak_n: int, *, repeats: int,
          number: int) -> list[dict[str, Any]]:
    """One row per matmul: its GFLOP/s under each backend (torch's in a process of its own,
    as the suite's workers: no JAX thread pool beside torch's OpenMP one)."""
    key = jax.random.PRNGKey(0)
    engine_options = cpu_tuning.program_options(_MLP_VARIABLES)
    backends = {"xla_engine_options": engine_options or None, "xla_process_flags": None}
    rows = []
    for name, (lhs_shape, rhs_shape, transposed) in _todo(batch, seeds_list, peak_n).items():
        lhs = jax.random.normal(key, lhs_shape)
        rhs = jax.random.normal(jax.random.fold_in(key, 1), rhs_shape)
        n = flops(lhs_shape, rhs_shape, transposed)
        row: dict[str, Any] = {"matmul": name, "lhs": list(lhs_shape), "rhs": list(rhs_shape),
                               "mflop": round(n / 1e6, 2)}
        for backend, options in backends.items():
            fn = jax.jit((lambda a, b: a.T @ b) if transposed else (lambda a, b: a @ b),
                         compiler_options=options)
            row[backend] = _gflops(functools.partial(fn, lhs, rhs), n, repeats, number)
        rows.append(row)
    if torch_models.torch_available():
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            by_name = pool.apply(torch_rates, (batch, seeds_list, peak_n),
                                 {"repeats": repeats, "number": number})
        for row in rows:
            row["torch"] = by_name[row["matmul"]]
    return rows


def format_rates(rows: list[dict[str, Any]]) -> str:
    """The rows as a small table of GFLOP/s."""
    cols = ("xla_engine_options", "xla_process_flags", "torch")
    lines = [f"{'matmul (GFLOP/s)':34s} {'MFLOP':>8s} " + " ".join(f"{c:>19s}" for c in cols)]
    for r in rows:
        lines.append(f"{r['matmul']:34s} {r['mflop']:8.1f} " + " ".join(
            f"{r[c]:19.1f}" if c in r else f"{'-':>19s}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (figures claim nothing)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        p.error(f"--batch and --repeats must be >= 1, got {args.batch}, {args.repeats}")
    batch, peak_n, repeats = (8, 64, 2) if args.tiny else (args.batch, 2048, args.repeats)
    rows = rates(batch, (1, 4), peak_n, repeats=repeats, number=1 if args.tiny else 10)
    result = {"batch": batch, "tiny": args.tiny, "rows": rows, "machine": report.machine_info()}
    print(format_rates(rows))
    return report.write_result(result, args.out)


if __name__ == "__main__":
    main()
