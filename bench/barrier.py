"""Barrier curve: one vmapped program over alpha vs the per-alpha loop.

What is measured: ``signticket.lmc.barrier_curve`` between two convnets (two random inits;
the values do not change the work) on a synthetic in-memory 28x28x1 dataset in the real
:class:`signticket.data.Dataset` container, 11 alphas, BN statistics re-estimated from 10
training batches at every alpha, then the whole test split scored. ``loop=False`` (default) runs
all alphas as one jitted ``lax.map``/vmap program; ``loop=True`` calls the same compiled
per-point program once per alpha (the reference). Each is timed from its first call (includes
compilation) and in steady state after that (median over repeats, whole curve per call,
including the host-side batching of the data that both variants do). At full size the
single program vmapping all 11 alphas at once (``alpha_chunk=11``, the GPU/TPU default; on CPU
the default is one alpha at a time inside the program) is timed as well.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench import timing, workloads
from signticket import data as data_lib
from signticket import lmc, models


def synthetic_dataset(n_train: int, n_test: int, seed: int = 0) -> data_lib.Dataset:
    """A learnable 28x28x1 uint8 dataset (brightness encodes the label), 10 classes."""
    rs = np.random.RandomState(seed)

    def split(n):
        labels = rs.randint(0, 10, n).astype(np.int32)
        noise = rs.randint(0, 60, (n, 28, 28, 1))
        return (noise + labels[:, None, None, None] * 19).astype(np.uint8), labels

    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    return data_lib.Dataset(
        name="synthetic28", num_classes=10, image_shape=(28, 28, 1),
        train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y,
        preprocess=data_lib.Preprocess(mean=(0.5,), std=(0.25,)),
    )


def run(tiny: bool = False) -> dict[str, Any]:
    """Seconds per 11-point curve, vmapped vs looped, and the largest difference between them."""
    n_train, n_test, batch, repeats = (200, 100, 20, 1) if tiny else (2000, 1000, 200, 3)
    dataset = synthetic_dataset(n_train, n_test)
    model = models.get("convnet", num_classes=10, channels=(16, 32, 64))
    a = workloads.init_variables(model, (28, 28, 1), 0)
    b = workloads.init_variables(model, (28, 28, 1), 1)
    curves = {}

    def curve(loop: bool, chunk: int | None = None):
        def call():
            curves[loop, chunk] = lmc.barrier_curve(
                model, dataset.preprocess, a, b, dataset, bn_batches=10, batch_size=batch,
                loop=loop, alpha_chunk=chunk)
            return curves[loop, chunk]
        return call

    vmapped = timing.time_calls(curve(False), repeats=repeats)
    looped = timing.time_calls(curve(True), repeats=repeats)
    extra = {}
    if not tiny:
        # The same single program vmapping all 11 alphas at once (the accelerator default).
        extra["vmap_all"] = timing.time_calls(curve(False, 11), repeats=repeats).to_json()
    error = {k: np.asarray(c.error) for k, c in curves.items()}
    diff = float(max(np.max(np.abs(e - error[True, None])) for e in error.values()))
    return {
        **extra,
        "model": "convnet (16, 32, 64)",
        "alphas": 11,
        "bn_batches": 10,
        "batch_size": batch,
        "train_examples": n_train,
        "test_examples": n_test,
        "vmapped": vmapped.to_json(),
        "loop": looped.to_json(),
        "speedup_steady": round(looped.median_s / vmapped.median_s, 3),
        "speedup_first_call": round(looped.first_s / vmapped.first_s, 3),
        "max_abs_error_difference": diff,
    }
