"""Sign-In vs plain masked SGD: time per train step and bytes of params + optimizer state.

What is measured: the engine's train step (:func:`bench.train_step.measure_engine`, no
augmentation) on ResNet-20, batch 128 of 32x32x3, at 90% uniform random sparsity, with

* masked SGD: ``optim.masked_updates(optim.sgd(0.05, momentum 0.9, weight decay 5e-4), mask)``;
* Sign-In: ``optim.sign_in(optax.sgd(0.05, momentum=0.9), mask, reset_every=391,
  weight_decay=5e-4)`` (``theta = m * w`` on every kernel, scaling reset every 391 steps = one
  CIFAR epoch at batch 128; the reset is a ``cond`` inside the step).

Bytes are ``sum(leaf.nbytes)`` over params and over the optimizer state (mask, momentum; for
Sign-In also ``m``, ``w`` and their momentum). No goal: the ratio is the price of Sign-In.
"""

from __future__ import annotations

from typing import Any

import optax

from bench import train_step, workloads
from signticket import optim
from signticket.tree import PyTree

SPARSITY = 0.9


def sign_in_tx(mask: PyTree | None) -> optax.GradientTransformation:
    """Sign-In over SGD with momentum, the decay given to Sign-In (see module doc)."""
    return optim.sign_in(optax.sgd(0.05, momentum=0.9), mask, reset_every=391,
                         weight_decay=5e-4)


def run(tiny: bool = False) -> dict[str, Any]:
    """ms per step and state bytes of both optimizers."""
    w = workloads.train_workload("resnet20", tiny)
    steps, repeats = (1, 1) if tiny else (3, 5)
    out: dict[str, Any] = {**w.describe(), "sparsity": SPARSITY}
    for name, make_tx in (("masked_sgd", train_step.masked_sgd), ("sign_in", sign_in_tx)):
        out[name] = train_step.measure_engine(
            w.model, w.batch, w.image_shape, steps=steps, repeats=repeats, sparsity=SPARSITY,
            augment=False, make_tx=make_tx)
    out["time_ratio"] = round(out["sign_in"]["step_ms_median"]
                              / out["masked_sgd"]["step_ms_median"], 3)
    out["bytes_ratio"] = round(out["sign_in"]["state_bytes"]["total"]
                               / out["masked_sgd"]["state_bytes"]["total"], 3)
    return out
