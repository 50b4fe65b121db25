"""Train-step throughput of signticket's real engine (masked SGD, sharded jit step).

    python -m bench.train_step                     # ResNet-20, batch 128, 32x32x3
    python -m bench.train_step --model convnet --image-shape 28,28,1
    python -m bench.train_step --tiny              # smoke run (CI): tiny sizes, no figures claimed

What is measured: ``Engine.train_step`` (preprocess on device, forward, backward, masked SGD
with momentum 0.9 and weight decay 5e-4, BN statistics update), jitted with the mesh's
shardings and the state donated, on one fixed uint8 batch already placed on the mesh. The
first call (tracing + compilation) is timed apart; the figure is images/s, median over repeats
of several back-to-back steps (see :mod:`bench.timing`). Writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import timing, workloads  # bench/__init__ imports signticket (XLA flags) first
from signticket import _host_malloc, cpu_tuning, models, optim
from signticket import data as data_lib
from signticket._xla_flags import YNN_FLAG
from signticket.native import conv as native_conv
from signticket.sharding import batch_sharded, make_mesh
from signticket.train import Engine
from signticket.tree import PyTree

#: ``make_tx(mask or None) -> optimizer`` of the benchmarked step.
TxFactory = Callable[[PyTree | None], optax.GradientTransformation]


def masked_sgd(mask: PyTree | None) -> optax.GradientTransformation:
    """The default optimizer: ``masked_updates(sgd(0.05, momentum 0.9, weight decay 5e-4))``."""
    return optim.masked_updates(optim.sgd(0.05, 0.9, 5e-4), mask)


def xla_flag_state() -> dict[str, Any]:
    """``XLA_FLAGS`` as this process sees it, whether the YNNPACK fusion flag is in it, where
    convolutions run (and how their OpenMP teams are placed) and whether the host malloc defaults
    are applied."""
    flags = os.environ.get("XLA_FLAGS", "")
    return {"xla_flags": flags, "ynn_fusion_flag": YNN_FLAG in flags,
            "conv_backend": "onednn" if native_conv.enabled() else "xla",
            "conv_team_placement": native_conv.team_placement(),
            "SIGNTICKET_XLA_DEFAULTS": os.environ.get("SIGNTICKET_XLA_DEFAULTS"),
            "host_malloc_defaults": _host_malloc.applied()}


class EngineStep(NamedTuple):
    """One workload's ready-to-call train step: ``step()`` advances the engine state held
    inside by one step on the fixed batch and returns the step's metrics."""

    step: Callable[[], dict[str, Any]]
    #: batch size, image shape, sparsity, augmentation, compute dtype, parameter count
    setting: dict[str, Any]
    state_bytes: dict[str, int]
    compiler_options: dict[str, Any]


def engine_step(
    model: nn.Module,
    batch_size: int,
    image_shape: tuple[int, ...],
    *,
    sparsity: float = 0.0,
    augment: bool = True,
    make_tx: TxFactory = masked_sgd,
    seed: int = 0,
    compute_dtype: Any = None,
    compiler_options: dict[str, Any] | None = None,
) -> EngineStep:
    """``Engine(model, make_tx(mask)).train_step`` on a fixed random uint8 batch, not yet run.

    Params come from :func:`bench.workloads.init_variables`. ``sparsity > 0`` draws a uniform
    random mask (seed 1) over the prunable leaves and starts from the masked params; with
    ``sparsity = 0`` the optimizer still masks (all True).
    ``augment`` adds random crops (padding 4, 32x32 inputs) and flips inside the step.
    ``compute_dtype`` (e.g. ``"bfloat16"``) is the engine's mixed-precision policy.
    ``compiler_options``: the step's XLA options; None (default) gives the ones experiments
    use (:func:`signticket.cpu_tuning.program_options`), ``{}`` the process's flags alone.
    """
    mesh = make_mesh()
    channels = image_shape[-1]
    pre = data_lib.Preprocess(
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        crop_padding=4 if augment and image_shape[0] >= 32 else 0,
        flip=augment,
    )
    variables = workloads.init_variables(model, image_shape, seed)
    params = variables["params"]
    mask = workloads.random_mask(params, sparsity, seed=1) if sparsity > 0 else None
    if mask is not None:
        params = jax.tree.map(lambda p, m: jnp.asarray(np.where(m, p, 0)), params, mask)
    if compiler_options is None:
        compiler_options = cpu_tuning.program_options(variables)
    engine = Engine(model, make_tx(mask), pre, mesh, compute_dtype=compute_dtype,
                    compiler_options=compiler_options or None)
    batch = workloads.synthetic_batch(batch_size, image_shape)
    state = engine.init_state(jax.random.PRNGKey(seed), batch["image"][:1], params=params,
                              batch_stats=variables["batch_stats"])
    state_bytes = {"params": timing.tree_nbytes(state.params),
                   "opt_state": timing.tree_nbytes(state.opt_state)}
    batch = jax.device_put(batch, batch_sharded(mesh))
    box = {"state": state}

    def step() -> dict[str, Any]:
        box["state"], metrics = engine.train_step(box["state"], batch)
        return metrics

    setting = {"batch_size": batch_size, "image_shape": list(image_shape), "sparsity": sparsity,
               "augment": augment, "compute_dtype": jnp.dtype(compute_dtype or jnp.float32).name,
               "param_count": workloads.param_count(params)}
    return EngineStep(step, setting, state_bytes, compiler_options)


def measure_engine(model: nn.Module, batch_size: int, image_shape: tuple[int, ...], *,
                   steps: int, repeats: int, **step_options: Any) -> dict[str, Any]:
    """Time the step of :func:`engine_step` (``step_options``: its keyword arguments): compile
    time, img/s, seconds per step and the bytes of params + optimizer state."""
    built = engine_step(model, batch_size, image_shape, **step_options)
    return engine_figures(built, timing.time_calls(built.step, repeats=repeats, number=steps))


def engine_figures(built: EngineStep, t: timing.Timing) -> dict[str, Any]:
    """The figures of a timed :class:`EngineStep` (``t``: its timing, however taken)."""
    batch_size = built.setting["batch_size"]
    return {
        **built.setting,
        "devices": len(jax.devices()),
        "backend": jax.default_backend(),
        "compile_s": round(t.compile_s, 2),
        "img_per_s_median": round(t.rate(batch_size), 1),
        "img_per_s_all": [round(batch_size / s, 1) for s in t.samples_s],
        "step_ms_median": round(1000 * t.median_s, 2),
        "compiler_options": built.compiler_options,
        "state_bytes": {**built.state_bytes, "total": sum(built.state_bytes.values())},
        "timing": t.to_json(),
        **xla_flag_state(),
    }


def measure(
    model_name: str,
    batch_size: int,
    image_shape: tuple[int, ...],
    *,
    steps: int,
    repeats: int,
    sparsity: float,
    model_kwargs: dict | None = None,
    augment: bool = True,
    compute_dtype: Any = None,
) -> dict[str, Any]:
    """:func:`measure_engine` of the registry model ``model_name`` (10 classes)."""
    model = models.get(model_name, num_classes=10, **(model_kwargs or {}))
    result = measure_engine(model, batch_size, image_shape, steps=steps, repeats=repeats,
                            sparsity=sparsity, augment=augment, compute_dtype=compute_dtype)
    return {"model": model_name, "model_kwargs": model_kwargs or {}, **result}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-shape", default="32,32,3")
    p.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sparsity", type=float, default=0.0, help="random mask (masking is on anyway)")
    p.add_argument("--no-augment", action="store_true", help="no random crops / flips in the step")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of forward and backward (params stay float32)")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    p.add_argument("--out", default="bench/results/train_step.json")
    args = p.parse_args(argv)
    shape = tuple(int(s) for s in args.image_shape.split(","))
    if args.tiny:
        args.batch_size, args.steps, args.repeats = 8, 1, 1
    result = measure(
        args.model,
        args.batch_size,
        shape,
        steps=args.steps,
        repeats=args.repeats,
        sparsity=args.sparsity,
        augment=not args.no_augment,
        compute_dtype=None if args.dtype == "float32" else args.dtype,
    )
    result["machine"] = f"{platform.node()} {platform.processor() or platform.machine()}"
    print(f"{'model':<10} {'batch':>5} {'devices':>7} {'compile s':>9} {'img/s (median)':>15}")
    print(
        f"{result['model']:<10} {result['batch_size']:>5} {result['devices']:>7} "
        f"{result['compile_s']:>9} {result['img_per_s_median']:>15}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
