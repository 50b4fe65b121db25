"""Evaluation of the Fashion-MNIST convnet: its single-channel first conv as fused shifted
slices (:func:`signticket.models.layers.one_input_channel_conv`, what evaluation runs since
stop 40) vs on oneDNN (what it ran before, and what training still runs).

    python -m bench.eval_forward                # 10,000 test images, batches of 1,000
    python -m bench.eval_forward --tiny         # smoke run (CI): tiny sizes, no figures claimed

What is measured: :func:`signticket.fit.evaluate` of the convnet (16, 32, 64) of the AWS CPU
config on an in-memory Fashion-MNIST-shaped synthetic test split (10,000 images, evaluation's
batch of 1,000), one engine per variant, warm, samples taken in turn. The ``onednn`` variant's
program is traced with the first conv sent to :func:`~signticket.models.layers.differentiated_conv`
(oneDNN where it is enabled). Figure: test images/s, the ratio paired by round, and the largest
difference between the two variants' test losses (float32 rounding: the taps sum in another
order).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from bench import report, timing, workloads
from signticket import cpu_tuning, fit, models, optim
from signticket import data as data_lib
from signticket.models import layers
from signticket.sharding import make_mesh
from signticket.train import Engine

IMAGE_SHAPE = (28, 28, 1)
EVAL_BATCH = 1000


@contextlib.contextmanager
def first_conv_on_onednn() -> Iterator[None]:
    """Programs traced inside run single-channel convs as they ran before stop 40."""
    taps = layers.one_input_channel_conv
    layers.one_input_channel_conv = layers.differentiated_conv
    try:
        yield
    finally:
        layers.one_input_channel_conv = taps


def _dataset(n_test: int) -> data_lib.Dataset:
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, (n_test, *IMAGE_SHAPE)).astype(np.uint8)
    labels = rs.randint(0, 10, n_test).astype(np.int32)
    return data_lib.Dataset("synthetic-fmnist", 10, IMAGE_SHAPE, images[:8], labels[:8],
                            images, labels, data_lib.Preprocess(mean=(0.2860,), std=(0.3530,)))


def run(tiny: bool = False, repeats: int = 7) -> dict[str, Any]:
    """Images/s of both variants (module docstring) and their paired ratio."""
    n_test, batch = (64, 32) if tiny else (10 * EVAL_BATCH, EVAL_BATCH)
    repeats = 1 if tiny else repeats
    net = models.get("convnet", num_classes=10, channels=(16, 32, 64))
    variables = workloads.init_variables(net, IMAGE_SHAPE, 0)
    ds = data_lib.DeviceSource(_dataset(n_test))
    options = cpu_tuning.program_options(variables) or None
    calls, losses = {}, {}
    for name, routing in (("taps", contextlib.nullcontext), ("onednn", first_conv_on_onednn)):
        engine = Engine(net, optim.masked_updates(optim.sgd(0.05, 0.9, 5e-4)), ds.preprocess,
                        make_mesh(), compiler_options=options)
        state = engine.init_state(jax.random.PRNGKey(0), ds.sample_images(),
                                  params=variables["params"],
                                  batch_stats=variables["batch_stats"])
        with routing():  # traces the eval step
            losses[name] = fit.evaluate(engine, state, ds, batch_size=batch)["loss"]
        calls[name] = (lambda engine=engine, state=state:
                       fit.evaluate(engine, state, ds, batch_size=batch))
    t = timing.time_alternating(calls, repeats=repeats)
    return {
        "model": "convnet (16, 32, 64), evaluation",
        "test_images": n_test,
        "eval_batch": batch,
        "compiler_options": options,
        "img_per_s": {name: round(s.rate(n_test), 1) for name, s in t.items()},
        "taps_vs_onednn": round(timing.paired_speedup(t["onednn"], t["taps"]), 3),
        "loss_difference": abs(losses["taps"] - losses["onednn"]),
        **{name: s.to_json() for name, s in t.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (figures claim nothing)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"need --repeats >= 1, got {args.repeats}")
    result = {**run(args.tiny, args.repeats), "machine": report.machine_info()}
    for name, rate in result["img_per_s"].items():
        print(f"{name:8s} {rate:10.1f} img/s")
    print(f"taps vs onednn {result['taps_vs_onednn']:.3f}x (paired by round); test losses differ "
          f"by {result['loss_difference']:.2e}")
    return report.write_result(result, args.out)


if __name__ == "__main__":
    main()
