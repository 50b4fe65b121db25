"""The train step at LLVM -O1 against XLA's default optimization level (-O3).

    python -m bench.step_options            # convnet, ResNet-20, VGG-11, MobileNetV2, MLP
    python -m bench.step_options --models convnet --blocks 60 --out result.json

What is measured: the suite's train-step workloads (plus MobileNetV2 and the permuted-masks
MLP) as ``Engine.train_step`` with masked SGD on one fixed uint8 batch, compiled twice in one
process with the model's options (:func:`signticket.cpu_tuning.program_options`): once at
LLVM -O1 (:func:`signticket._xla_flags.llvm_o1_options`) and once at XLA's default level.
The two steps then run in alternating blocks of a few steps (which goes first alternates
too: :func:`bench.timing.time_alternating`), so a slow spell of this noisy machine lands on
both; reported are the median seconds per step of each side, how many blocks -O1 won, whether
both sides' params are bit-identical after
all their steps, and whether experiments use -O1 for the model. The compilation cache is off,
so both compiles are real.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import numpy as np

from bench import report, timing, train_step, workloads
from signticket import cpu_tuning, models
from signticket import data as data_lib
from signticket.train import Engine

#: the permuted-masks tables' MLP on Fashion-MNIST, beside the suite's conv workloads
MLP = workloads.Workload("mlp", models.get("mlp", num_classes=10), (28, 28, 1), 128,
                         "mlp (permuted-masks tables)")
#: depthwise convs as shifted slices: XLA-emitted loops, not oneDNN
MOBILENET = workloads.Workload("mobilenet_v2", models.get("mobilenet_v2", num_classes=10),
                               (32, 32, 3), 32, "mobilenet_v2 (CIFAR)")
WORKLOADS = ("convnet", "resnet20", "vgg11", "mobilenet_v2", "mlp")
LEVEL = "xla_backend_optimization_level"


def _workload(name: str, tiny: bool) -> tuple[workloads.Workload, int]:
    """The workload and its steps per block."""
    if name == "mlp":
        return MLP, 1 if tiny else 20
    if name == "mobilenet_v2":
        return (workloads.Workload("mobilenet_v2", models.get("mobilenet_v2", num_classes=10,
                                                              width_mult=0.1), (32, 32, 3), 4,
                                   "mobilenet_v2 width 0.1 (tiny)") if tiny else MOBILENET), 2
    steps, _ = workloads.train_steps(name, tiny)
    return workloads.train_workload(name, tiny), max(1, steps // 2)


def measure(name: str, blocks: int, tiny: bool = False) -> dict[str, Any]:
    """Both sides of one workload over ``blocks`` alternating blocks each."""
    w, per_block = _workload(name, tiny)
    variables = workloads.init_variables(w.model, w.image_shape, 0)
    options = cpu_tuning.program_options(variables)
    default = {k: v for k, v in options.items() if k != LEVEL}
    sides = {"o1": {**default, LEVEL: 1}, "default_level": default}
    channels = w.image_shape[-1]
    pre = data_lib.Preprocess(mean=(0.5,) * channels, std=(0.25,) * channels)
    batch = jax.device_put(workloads.synthetic_batch(w.batch, w.image_shape))
    state, engines = {}, {}
    for side, opts in sides.items():
        engines[side] = Engine(w.model, train_step.masked_sgd(None), pre,
                               compiler_options=opts or None)
        state[side] = engines[side].init_state(
            jax.random.PRNGKey(0), batch["image"][:1], params=variables["params"],
            batch_stats=variables["batch_stats"])

    def step(side: str):
        def call():
            state[side], _ = engines[side].train_step(state[side], batch)
            return state[side]
        return call

    timed = timing.time_alternating({side: step(side) for side in sides}, repeats=blocks,
                                    number=per_block)
    seconds = {side: t.samples_s for side, t in timed.items()}
    compile_s = {side: round(t.first_s, 2) for side, t in timed.items()}
    median = {side: t.median_s for side, t in timed.items()}
    return {
        **w.describe(), "options": options, "experiments_use_o1": options.get(LEVEL) == 1,
        "blocks": blocks, "steps_per_block": per_block,
        **{f"{side}_step_ms_median": round(1000 * m, 2) for side, m in median.items()},
        **{f"{side}_compile_s": s for side, s in compile_s.items()},
        "speedup": round(median["default_level"] / median["o1"], 3),
        "blocks_o1_faster": sum(a < b for a, b in zip(
            seconds["o1"], seconds["default_level"], strict=True)),
        "sides_bit_identical": all(np.array_equal(a, b, equal_nan=True) for a, b in zip(
            jax.tree.leaves(jax.device_get(state["o1"].params)),
            jax.tree.leaves(jax.device_get(state["default_level"].params)), strict=True)),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(WORKLOADS),
                        help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--blocks", type=int, default=30, help="timed blocks per side")
    parser.add_argument("--tiny", action="store_true", help="smoke run: tiny sizes, 1 step")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown or not names:
        parser.error(f"unknown workload(s) {', '.join(unknown) or '(none given)'}; "
                     f"available: {', '.join(WORKLOADS)}")
    if args.blocks < 1:
        parser.error(f"--blocks must be >= 1, got {args.blocks}")
    rows = report.uncached_rows(names, lambda n: measure(n, args.blocks, args.tiny))
    result = {"machine": report.machine_info(), "rows": rows}
    return report.write_result(result, args.out)


if __name__ == "__main__":
    cpu_tuning.apply()
    main()
