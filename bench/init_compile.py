"""Compiling a model's init: XLA's defaults against the init's own options, per registered model.

What is measured: for each model of ``signticket.models.registry`` (or ``--models``), the
wall time of compiling the library's init program (``signticket.models.variables``) twice,
with XLA's default options and with :func:`signticket.cpu_tuning.init_program_options` (what
``Engine.init_variables`` and ``models.init_variables`` use), and whether the two programs
give bit-identical variables for several seeds. ``x`` is the first of 28x28x1, 32x32x3 and
224x224x3 the model accepts. The compilation cache is off,
so every figure is a real compile.

The claim the options rest on is the identity column: a run's init is part of its inputs
(``inputs.json``), so options that changed one bit would orphan every run made before.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench import report
from signticket import cpu_tuning
from signticket.models import variables

SHAPES = ((1, 28, 28, 1), (1, 32, 32, 3), (1, 224, 224, 3))


def _input_for(model) -> jax.Array:
    for shape in SHAPES:
        x = jnp.zeros(shape, jnp.float32)
        try:
            jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.PRNGKey(0), x)
        except Exception:  # a model built for other inputs: try the next shape
            continue
        return x
    raise ValueError(f"{model!r} accepts none of {SHAPES}")


def measure(name: str, seeds: tuple[int, ...] = (0, 1, 7)) -> dict[str, Any]:
    """Compile seconds under both option sets and the identity of their variables."""
    from signticket.models import registry

    model = registry.get(name, num_classes=10)
    x = _input_for(model)
    row: dict[str, Any] = {"model": name, "input": list(x.shape)}
    outputs, seconds = [], {}
    # the library's own init program, with the options and without them
    for label, program in (("default", variables._init_program(())),
                           ("init", variables.init_program())):
        start = time.perf_counter()
        compiled = program.lower(model, jax.random.PRNGKey(0), x).compile()
        # unrounded for the ratio: a program the compilation cache holds "compiles" in < 1 ms
        seconds[label] = time.perf_counter() - start
        row[f"{label}_compile_s"] = round(seconds[label], 6)
        outputs.append([jax.device_get(compiled(jax.random.PRNGKey(s), x)) for s in seeds])
    row["bit_identical"] = all(
        np.array_equal(a, b)
        for one, other in zip(*outputs, strict=True)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(other), strict=True))
    row["seeds"] = list(seeds)
    row["speedup"] = round(seconds["default"] / seconds["init"], 2)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from signticket.models import registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(registry.names()),
                        help="comma-separated registered names (default: all)")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(registry.names()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; available: "
                     f"{', '.join(registry.names())}")
    rows = report.uncached_rows(names, measure)
    result = {"machine": report.machine_info(), "options": cpu_tuning.init_program_options(),
              "rows": rows}
    return report.write_result(result, args.out)


if __name__ == "__main__":
    cpu_tuning.apply()
    main()
