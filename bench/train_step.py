"""Train-step throughput of signticket's real engine (masked SGD, sharded jit step).

    python -m bench.train_step                     # ResNet-20, batch 128, 32x32x3
    python -m bench.train_step --model convnet --image-shape 28,28,1
    python -m bench.train_step --tiny              # smoke run (CI): tiny sizes, no figures claimed

Prints compile time and images/s (median over repeats, each repeat timing several steps after
``block_until_ready``), and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from signticket import data as data_lib
from signticket import masks, models, optim
from signticket.sharding import batch_sharded, make_mesh
from signticket.train import Engine


def measure(
    model_name: str,
    batch_size: int,
    image_shape: tuple[int, ...],
    *,
    steps: int,
    repeats: int,
    sparsity: float,
    model_kwargs: dict | None = None,
) -> dict:
    mesh = make_mesh()
    model = models.get(model_name, num_classes=10, **(model_kwargs or {}))
    channels = image_shape[-1]
    pre = data_lib.Preprocess(
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        crop_padding=4 if image_shape[0] >= 32 else 0,
        flip=True,
    )
    engine = Engine(model, optim.masked(optim.sgd(0.05, 0.9, 5e-4)), pre, mesh)
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, (batch_size, *image_shape)).astype(np.uint8)
    labels = rs.randint(0, 10, batch_size).astype(np.int32)
    batch = jax.device_put({"image": images, "label": labels}, batch_sharded(mesh))
    state = engine.init_state(jax.random.PRNGKey(0), images)
    if sparsity > 0:
        mask = masks.random_mask(jax.random.PRNGKey(1), state.params, sparsity)
        state = state.replace(
            params=masks.apply_mask(state.params, mask),
            opt_state=optim.set_mask(state.opt_state, mask),
        )
    t0 = time.perf_counter()
    state, m = engine.train_step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = engine.train_step(state, batch)
        jax.block_until_ready((state, m))
        rates.append(steps * batch_size / (time.perf_counter() - t0))
    return {
        "model": model_name,
        "model_kwargs": model_kwargs or {},
        "batch_size": batch_size,
        "image_shape": list(image_shape),
        "sparsity": sparsity,
        "devices": len(jax.devices()),
        "backend": jax.default_backend(),
        "compile_s": round(compile_s, 2),
        "img_per_s_median": round(statistics.median(rates), 1),
        "img_per_s_all": [round(r, 1) for r in rates],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-shape", default="32,32,3")
    p.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sparsity", type=float, default=0.0, help="random mask (masking is on anyway)")
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
