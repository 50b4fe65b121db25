"""One IMP round end to end on real Fashion-MNIST, its wall time split into its pieces.

What is measured: the AWS CPU config (``signticket/experiments/configs/aws_cpu.py``: convnet (16,
32, 64), batch 128, SGD 0.05 constant, momentum 0.9, weight decay 5e-4, AWS norm interpolation on,
global magnitude pruning of 20%) but on a 5,000-example stratified train subset (tiny: 512) of the
real offline Fashion-MNIST (``signticket.runs.load_dataset``), full 10k test split (tiny: 1,000), 1
epoch per round, 2 rounds. Each round does what ``lottery.imp`` / ``train_run`` / ``fit`` do, each
piece timed on its own (blocked until done):

* training: one epoch of ``engine.train_step`` over on-device batches (``train_batches`` with
  ``to_device`` data), metric sums read back as ``fit`` does;
* evaluation: ``signticket.fit.evaluate`` on the test split;
* checkpointing: an orbax save of the whole ``TrainState`` (``signticket.checkpoint``), waited
  for;
* pruning: ``masks.magnitude_prune`` (global, 20%), then the next round's start state: masked
  params, ``optim.set_mask`` in a fresh optimizer state, ``engine.place``.

Round 1 includes compiling the steps (and the pruning ops); round 2 is warm. Loading the data
is timed apart. No goal.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from bench import timing, workloads
from signticket import data as data_lib
from signticket import lottery, masks, optim, runs
from signticket.checkpoint import Checkpointer
from signticket.fit import evaluate
from signticket.sharding import make_mesh
from signticket.train import Engine

PHASES = ("training", "evaluation", "checkpointing", "pruning")


def config(tiny: bool):
    """The AWS CPU config with the subset and round counts of this benchmark."""
    from signticket.experiments.configs import aws_cpu

    c = aws_cpu.get_config()
    c.data.train_subset = 512 if tiny else 5000
    c.data.test_subset = 1000 if tiny else 0
    c.imp.rounds = 2
    c.imp.epochs_per_round = 1
    c.aws = True
    return c


def run(tiny: bool = False) -> dict[str, Any]:
    """Seconds of every phase of each round, and each phase's share of its round."""
    cfg = config(tiny)
    dataset, load_s = timing.timed(runs.load_dataset, cfg.data)
    mesh = make_mesh()
    steps = data_lib.steps_per_epoch(dataset.num_train, cfg.batch_size)
    model = runs.build_model(cfg.model, dataset.num_classes)
    tx = runs.build_optimizer(cfg.optimizer, cfg.imp.epochs_per_round, steps)
    engine = Engine(model, tx, dataset.preprocess, mesh, lottery.aws_pre_forward())
    init = workloads.init_variables(model, dataset.image_shape, cfg.seed)
    hook_state = {"psi_init": init["params"]}
    train_dev = data_lib.to_device(dataset.train_images, dataset.train_labels, mesh)
    test_dev = data_lib.to_device(dataset.test_images, dataset.test_labels, mesh)
    state = engine.init_state(jax.random.PRNGKey(cfg.seed), dataset.train_images[:1],
                              params=init["params"], batch_stats=init["batch_stats"],
                              hook_state=hook_state)
    mask = masks.full_mask(state.params)  # as lottery.imp: placed like the trained params
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(1, cfg.imp.rounds + 1):
            seconds: dict[str, float] = {}

            def train(state, r=r):
                sums = {"loss": jnp.zeros(()), "accuracy": jnp.zeros(())}
                key = jax.random.fold_in(jax.random.PRNGKey(cfg.data_seed + r), 1)
                for batch in data_lib.train_batches(
                    dataset.train_images, dataset.train_labels, key, cfg.batch_size, mesh,
                    device_data=train_dev,
                ):
                    state, m = engine.train_step(state, batch)
                    sums = jax.tree.map(jnp.add, sums, m)
                return state, {k: float(v) / steps for k, v in sums.items()}

            (state, train_metrics), seconds["training"] = timing.timed(train, state)
            test, seconds["evaluation"] = timing.timed(
                evaluate, engine, state, dataset, device_data=test_dev)

            def checkpoint(state, r=r):
                ckpt = Checkpointer(Path(tmp) / f"round{r}")
                ckpt.save(1, state)
                ckpt.close()

            _, seconds["checkpointing"] = timing.timed(checkpoint, state)

            def prune(state, mask):
                mask = masks.magnitude_prune(state.params, mask, cfg.imp.fraction, cfg.imp.scope)
                fresh = engine.reset_optimizer(state)
                nxt = engine.place(fresh.replace(
                    params=masks.apply_mask(state.params, mask),
                    opt_state=optim.set_mask(fresh.opt_state, mask)))
                return nxt, mask

            (state, mask), seconds["pruning"] = timing.timed(prune, state, mask)
            total = sum(seconds.values())
            rounds.append({
                "round": r,
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "percent": {k: round(100 * v / total, 1) for k, v in seconds.items()},
                "total_s": round(total, 3),
                "train_loss": round(train_metrics["loss"], 4),
                "test_accuracy": round(test["accuracy"], 4),
                "remaining": round(1 - float(masks.sparsity(mask).overall), 4),
            })
    return {
        "config": "signticket/experiments/configs/aws_cpu.py (AWS on), 1 epoch/round, 2 rounds",
        "train_examples": dataset.num_train,
        "test_examples": dataset.num_test,
        "batch_size": cfg.batch_size,
        "steps_per_epoch": steps,
        "load_dataset_s": round(load_s, 3),
        "rounds": rounds,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
