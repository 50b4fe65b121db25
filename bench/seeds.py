"""N seeds of a small model, one vmapped jitted train step vs N sequential jitted steps: the MLP
of the permuted-masks tables (784-128-128-128-10, ``permuted_fmnist_mlp.py``), whose one seed
leaves the cores idle, and the BN convnet (16, 32, 64), whose one seed does not.

What is vmapped: :func:`train_step`, a pure function built from the engine's pieces — the dataset's
:class:`~signticket.data.Preprocess` (normalization; no augmentation), the Flax ``model.apply`` in
train mode with mutable ``batch_stats``, :func:`signticket.train.cross_entropy`,
``jax.value_and_grad``, the optimizer ``optim.masked_updates(optim.sgd(0.05, momentum 0.9, weight
decay 5e-4))`` and ``optax.apply_updates`` — over a leading seed axis of ``(params, batch_stats,
opt_state, images, labels)``: every seed has its own init (``PRNGKey(seed)``), its own optimizer
state and its own batch of 128 Fashion-MNIST-shaped (28x28x1 uint8, synthetic) images. The state is
donated in both variants.

Baseline: the same ``train_step`` jitted for one seed, called once per seed per step. A third
variant, ``unrolled``, jits the N seeds' steps side by side into one program without vmap: the
same per-seed ops as the baseline (bit-identical to it, which vmap is not: its batched matmuls
round differently), one dispatch per step: what ``fit_lockstep`` runs. Figure: total images/s
over all seeds (median over repeats, compile timed apart; the variants' samples are taken in
turn, :func:`bench.timing.time_alternating`, so a slow spell of the machine hits all of them),
and how far each variant's params are
from the sequential ones after a few steps (``max_abs_diff_vs_sequential``; 0.0 means
bit-identical).

Every variant is compiled with the XLA options the engine gives the model
(:func:`signticket.cpu_tuning.program_options`: for the conv-free MLP, LLVM -O1 and dots off
YNNPACK; none for the convnet); the sequential rate under the process's flags alone (the
engine before those options) is recorded beside it as ``sequential_process_flags_img_per_s``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bench import timing, workloads
from signticket import cpu_tuning, models, optim
from signticket import data as data_lib
from signticket.train import cross_entropy

IMAGE_SHAPE = (28, 28, 1)


def make_train_step(model, tx: optax.GradientTransformation, preprocess):
    """``(params, batch_stats, opt_state, images, labels) -> (params, batch_stats, opt_state,
    loss)``: one SGD step of one seed, pure (no jit, no sharding)."""

    def train_step(params, batch_stats, opt_state, images, labels):
        x = preprocess(images, None, False)

        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x,
                                          train=True, mutable=["batch_stats"])
            return cross_entropy(logits, labels).mean(), updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    return train_step


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unrolled_step(step):
    """N seeds' steps in one program, side by side (no vmap): lists of per-seed arguments."""
    def steps(params, batch_stats, opt_state, images, labels):
        outs = [step(*args) for args in zip(params, batch_stats, opt_state, images, labels,
                                             strict=True)]
        return tuple(list(column) for column in zip(*outs, strict=True))

    return steps


def _private_copies(states: list) -> tuple[list, list, list]:
    """Each variant's own copy of the seeds' ``[params, batch_stats, opt_state]`` (every
    variant donates its state): per seed (sequential), stacked (vmapped), per field and seed
    (unrolled)."""
    copy = functools.partial(jax.tree.map, jnp.copy)
    seq = [copy(s) for s in states]
    vec = [_stack([s[i] for s in states]) for i in range(3)]
    unr = [[copy(s[i]) for s in states] for i in range(3)]
    return seq, vec, unr


def _max_diff_vs_sequential(states, images, labels, single, batched, unrolled,
                            steps: int = 3) -> dict[str, float]:
    """Largest |param difference| from the sequential seeds after ``steps`` steps, for the
    vmapped and the unrolled variant (0.0: bit-identical)."""
    seq, vec, unr = _private_copies(states)
    all_images, all_labels = jnp.stack(images), jnp.stack(labels)
    for _ in range(steps):
        seq = [single(*s, x, y)[:3] for s, x, y in zip(seq, images, labels, strict=True)]
        vec = batched(*vec, all_images, all_labels)[:3]
        unr = unrolled(*unr, images, labels)[:3]

    def worst(params_of_seed):
        return max(float(jnp.max(jnp.abs(a - b)))
                   for i, s in enumerate(seq)
                   for a, b in zip(jax.tree.leaves(s[0]), jax.tree.leaves(params_of_seed(i)),
                                   strict=True))

    return {"vmapped": worst(lambda i: jax.tree.map(lambda x: x[i], vec[0])),
            "unrolled": worst(lambda i: unr[0][i])}


def _measure(n: int, model, tx, single, batched, unrolled, batch: int, steps: int,
             repeats: int, single_process_flags=None) -> dict[str, Any]:
    variables = [workloads.init_variables(model, IMAGE_SHAPE, s) for s in range(n)]
    data = [workloads.synthetic_batch(batch, IMAGE_SHAPE, seed=s) for s in range(n)]
    states = [[v["params"], v["batch_stats"], tx.init(v["params"])] for v in variables]
    images = [jnp.asarray(d["image"]) for d in data]
    labels = [jnp.asarray(d["label"]) for d in data]
    diffs = _max_diff_vs_sequential(states, images, labels, single, batched, unrolled)
    seq, vec, unr = _private_copies(states)
    all_images, all_labels = jnp.stack(images), jnp.stack(labels)

    def sequential(step=single):
        losses = []
        for i in range(n):
            *seq[i], loss = step(*seq[i], images[i], labels[i])
            losses.append(loss)
        return losses

    def vmapped():
        params, stats, opt_state, loss = batched(*vec, all_images, all_labels)
        vec[:] = [params, stats, opt_state]
        return loss

    def side_by_side():
        params, stats, opt_state, loss = unrolled(*unr, images, labels)
        unr[:] = [params, stats, opt_state]
        return loss

    calls = {"sequential": sequential, "vmapped": vmapped, "unrolled": side_by_side}
    if single_process_flags is not None:
        calls["sequential_process_flags"] = functools.partial(sequential, single_process_flags)
    t = timing.time_alternating(calls, repeats=repeats, number=steps)
    flags_only = ({"sequential_process_flags_img_per_s":
                   round(t["sequential_process_flags"].rate(n * batch), 1)}
                  if "sequential_process_flags" in t else {})
    return {
        "vmapped_img_per_s": round(t["vmapped"].rate(n * batch), 1),
        "sequential_img_per_s": round(t["sequential"].rate(n * batch), 1),
        "unrolled_img_per_s": round(t["unrolled"].rate(n * batch), 1),
        **flags_only,
        "speedup": round(t["sequential"].median_s / t["vmapped"].median_s, 3),
        "unrolled_speedup": round(t["sequential"].median_s / t["unrolled"].median_s, 3),
        # the same, as the median of each round's ratio (samples taken in turn)
        "speedup_paired": round(timing.paired_speedup(t["sequential"], t["vmapped"]), 3),
        "unrolled_speedup_paired": round(
            timing.paired_speedup(t["sequential"], t["unrolled"]), 3),
        "max_abs_diff_vs_sequential": diffs,
        **{name: samples.to_json() for name, samples in t.items()},
    }


MODELS = {
    "mlp": ("MLP 784-128-128-128-10", lambda: models.get("mlp", num_classes=10,
                                                         widths=(128, 128, 128))),
    "convnet": ("convnet (16, 32, 64)", lambda: models.get("convnet", num_classes=10,
                                                           channels=(16, 32, 64))),
}


def run(tiny: bool = False, model: str = "mlp") -> dict[str, Any]:
    """Total img/s of N seeds of ``model`` (:data:`MODELS`), vmapped vs sequential, for N in
    (4, 8) (tiny: 2)."""
    label, build = MODELS[model]
    net = build()
    tx = optim.masked_updates(optim.sgd(0.05, 0.9, 5e-4))
    pre = data_lib.Preprocess(mean=(0.5,), std=(0.25,))
    step = make_train_step(net, tx, pre)
    options = cpu_tuning.program_options(workloads.init_variables(net, IMAGE_SHAPE, 0))
    jit = functools.partial(jax.jit, donate_argnums=(0, 1, 2), compiler_options=options or None)
    single, batched, unrolled = jit(step), jit(jax.vmap(step)), jit(unrolled_step(step))
    single_process_flags = jax.jit(step, donate_argnums=(0, 1, 2)) if options else None
    # The MLP's step is ~2 ms: more steps per sample keep the clock's resolution out of it.
    batch, steps, repeats, seeds = (16, 1, 1, (2,)) if tiny else (
        128, 20 if model == "mlp" else 5, 15 if model == "mlp" else 5, (4, 8))
    return {
        "model": label,
        "batch_per_seed": batch,
        "image_shape": list(IMAGE_SHAPE),
        "compiler_options": options,
        "by_seeds": {str(n): _measure(n, net, tx, single, batched, unrolled, batch, steps,
                                      repeats, single_process_flags)
                     for n in seeds},
    }
