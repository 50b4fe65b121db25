"""The epoch loop: train, evaluate, checkpoint, resume, log — for any :class:`Engine`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from signticket import data as data_lib
from signticket import interrupts, provenance
from signticket import metrics as metrics_lib
from signticket.checkpoint import Checkpointer, NoIntactCheckpointError
from signticket.errors import UserError
from signticket.phases import phase
from signticket.train import Engine, TrainState, check_finite

log = logging.getLogger(__name__)

#: ``on_epoch_end(epoch, state) -> state``: a method's hook between epochs (e.g. a reset).
EpochHook = Callable[[int, TrainState], TrainState]


def evaluate(
    engine: Engine,
    state: TrainState,
    dataset: data_lib.Dataset | data_lib.Source,
    batch_size: int = 1000,
    device_data=None,
) -> dict[str, float]:
    """Test loss and accuracy of ``state`` on the whole test split of ``dataset`` (an in-memory
    :class:`~signticket.data.Dataset` or a :class:`~signticket.data.Source`, e.g. streamed)."""
    batch_size = max(engine.mesh.size, batch_size - batch_size % engine.mesh.size)
    if device_data is not None:  # the caller's split already on device
        batches = data_lib.eval_batches(dataset.test_images, dataset.test_labels, batch_size,
                                        engine.mesh, device_data=device_data)
    else:
        batches = data_lib.as_source(dataset).eval_batches(batch_size, engine.mesh)
    return engine.evaluate(state, batches)


def fit(
    engine: Engine,
    state: TrainState,
    dataset: data_lib.Dataset | data_lib.Source,
    *,
    epochs: int,
    batch_size: int,
    data_seed: int = 0,
    checkpointer: Checkpointer | None = None,
    metrics: metrics_lib.MetricWriter | None = None,
    eval_every: int = 1,
    checkpoint_every: int = 1,
    checkpoint_min_interval_s: float = 0.0,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
    desc: str = "train",
    learning_rate: optax.ScalarOrSchedule | None = None,
    finish_in_background: bool = False,
) -> tuple[TrainState, dict[str, float]]:
    """Train ``state`` for ``epochs`` epochs; returns the final state and test metrics.

    With a ``checkpointer`` the loop is resumable: it restores the newest checkpoint (epoch
    ``e``) and continues at epoch ``e + 1``, replaying the same data order and randomness, so a
    killed and resumed run equals an uninterrupted one. A finished run (``DONE.json``) is not
    trained again: its final state is restored and returned. A NaN/inf loss stops the run with
    :class:`~signticket.train.NonFiniteLossError` before that state is saved. An epoch's
    checkpoint is written while the next epoch trains; a write that fails stops the run at the
    next save (or at the end) with :class:`~signticket.checkpoint.CheckpointSaveError`, and a
    re-run resumes from the last step written.

    ``dataset`` is an in-memory :class:`~signticket.data.Dataset` (put on the devices once) or
    any :class:`~signticket.data.Source` (a streamed ImageNet): epoch ``e``'s batches are a pure
    function of ``(data_seed, e)`` for both, which is what makes resuming exact.

    Checkpoints are saved every ``checkpoint_every`` epochs and after the last one, but at
    most once per ``checkpoint_min_interval_s`` seconds of the run (counted from its start or
    resumption; the last epoch is always saved): short epochs skip saves that would cost more
    than the work they keep (orbax's ``minimum_interval_secs``). A kill loses at most that long
    of training, and the resumed run is still equal to an uninterrupted one.

    ``metrics`` is cut back to the epochs the restored checkpoint holds (to nothing when there
    is none), so epochs that are trained again are never recorded twice. Each epoch's record
    holds train and test loss/accuracy, the learning rate of its last step (``learning_rate``,
    a schedule of the optimizer's step count, or a constant; omitted when None), the sparsity of
    the mask in use, and its wall-clock time (:data:`~signticket.metrics.TIMING_KEYS`, measured
    once per epoch: no host sync per step). With ``progress=False`` each epoch is also one INFO
    log line.

    With ``finish_in_background`` fit returns without waiting for the last checkpoint write:
    ``DONE.json`` is written after it in the background, and ``checkpointer.close()`` (or
    ``wait()``) ends that and raises its failure (:mod:`signticket.finishing`).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        low = 0 if name == "epochs" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
    cadence = SaveCadence(checkpoint_every, checkpoint_min_interval_s)
    start = 0
    if checkpointer is not None and checkpointer.latest_step() is not None:
        try:
            start, state = checkpointer.restore(state)
        except NoIntactCheckpointError as e:
            log.warning("%s; training from the start", e)
        else:
            done = checkpointer.done()
            if done is not None and start >= epochs:
                provenance.check_reuse(checkpointer.directory, done)
                return state, {k: v for k, v in done.items() if k.startswith("test_")}
            log.info("resuming %s at epoch %d", checkpointer.directory, start + 1)
    if metrics is not None:
        # Records past the restored state (a kill between the metrics write and the checkpoint
        # commit, a removed or damaged checkpoint) describe epochs about to be redone.
        metrics.truncate_after(start)
    source = data_lib.as_source(dataset)  # one device copy of an in-memory dataset
    n_steps = data_lib.steps_per_epoch(source.num_train, batch_size)
    test: dict[str, float] = {}
    bar = tqdm(
        total=epochs * n_steps,
        initial=start * n_steps,
        desc=desc,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    with interrupts.ctrl_c_reraised():  # a Ctrl-C swallowed by a GC callback stops it too
        for epoch in range(start + 1, epochs + 1):
            started = time.perf_counter()
            with phase("training"):
                sums = {"loss": jnp.zeros(()), "accuracy": jnp.zeros(())}
                taken = 0
                for batch in source.train_epoch(epoch, batch_size, data_seed, engine.mesh):
                    state, m = engine.train_step(state, batch)
                    interrupts.check()
                    sums = jax.tree.map(jnp.add, sums, m)
                    taken += 1
                    bar.update()
                if taken == 0:
                    raise UserError(f"epoch {epoch}: the data source gave no batch of {batch_size}")
                train = {k: float(v) / taken for k, v in sums.items()}  # the epoch's one host sync
            seconds = time.perf_counter() - started
            check_finite(train, f"epoch {epoch}")
            in_use = _schedule_and_mask(state, learning_rate)  # before a hook changes the mask
            if on_epoch_end is not None:
                with phase("epoch hooks"):
                    state = on_epoch_end(epoch, state)
            record = {
                "epoch": epoch,
                "step": int(state.step),
                **{f"train_{k}": v for k, v in train.items()},
                **in_use,
            }
            if epoch % eval_every == 0 or epoch == epochs:
                with phase("evaluation"):
                    test = evaluate(engine, state, source)
                record.update({f"test_{k}": v for k, v in test.items()})
            bar.set_postfix(loss=f"{train['loss']:.3f}", test_acc=f"{test.get('accuracy', 0):.3f}")
            record.update(_timing(seconds, taken, batch_size))
            if not progress:
                log.info(metrics_lib.format_epoch(desc, record, epochs))
            if metrics is not None:
                metrics.write(record)
            interrupts.check()
            if checkpointer is not None and cadence.due(epoch, epochs):
                with phase("checkpointing"):
                    # Written while the next epoch trains.
                    checkpointer.save(epoch, state, wait=False)
                cadence.saved()
    bar.close()
    if not test:
        with phase("evaluation"):
            test = evaluate(engine, state, source)
    summary = {f"test_{k}": v for k, v in test.items()}
    if checkpointer is not None:
        with phase("checkpointing"):
            if checkpointer.latest_step() is None:
                checkpointer.save(epochs, state)
            checkpointer.mark_done({"epoch": epochs, **summary}, wait=not finish_in_background)
    return state, summary


class SaveCadence:
    """Which epochs ``fit`` saves: every ``every``-th and the last, at most one per
    ``min_interval_s`` seconds (the last always)."""

    def __init__(self, every: int, min_interval_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        if (not isinstance(min_interval_s, int | float) or isinstance(min_interval_s, bool)
                or not math.isfinite(min_interval_s) or min_interval_s < 0):
            raise UserError("checkpoint_min_interval_s must be a finite number >= 0, got "
                            f"{min_interval_s!r}")
        self.every, self.min_interval_s, self.clock = every, float(min_interval_s), clock
        self.last = clock()

    def due(self, epoch: int, epochs: int) -> bool:
        if epoch == epochs:
            return True
        if epoch % self.every:
            return False
        if self.min_interval_s == 0:
            return True
        ready = self.clock() - self.last >= self.min_interval_s
        if jax.process_count() > 1:  # all processes take part in a save: process 0 decides
            from jax.experimental import multihost_utils

            ready = bool(multihost_utils.broadcast_one_to_all(np.bool_(ready)))
        return ready

    def saved(self) -> None:
        self.last = self.clock()


def _timing(seconds: float, n_steps: int, batch_size: int) -> dict[str, float]:
    # Measured around an epoch's training (which ends in one sync), so the steps stay
    # asynchronous; evaluation and checkpointing are not included. The first epoch of a
    # process includes compiling the step.
    return {
        "epoch_time_s": seconds,
        "step_time_ms": 1e3 * seconds / n_steps,
        "images_per_s": n_steps * batch_size / seconds if seconds > 0 else float("inf"),
    }


def _schedule_count(opt_state) -> jax.Array | None:
    """The step count the learning-rate schedule sees (optax's ``ScaleByScheduleState``): it
    restarts with the optimizer (a reset), which ``state.step`` does not."""
    for node in jax.tree.leaves(
            opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState)):
        if isinstance(node, optax.ScaleByScheduleState):
            return node.count
    return None


def _schedule_and_mask(state: TrainState, learning_rate) -> dict[str, float]:
    """``lr`` of the epoch's last step and ``sparsity`` (over prunable leaves) of the mask it
    trained under, each when known."""
    from signticket.masks import sparsity
    from signticket.optim import get_mask

    out: dict[str, float] = {}
    if callable(learning_rate):
        count = _schedule_count(state.opt_state)
        count = state.step if count is None else count
        out["lr"] = float(learning_rate(jnp.maximum(count - 1, 0)))
    elif learning_rate is not None:
        out["lr"] = float(learning_rate)
    try:
        out["sparsity"] = float(sparsity(get_mask(state.opt_state)).overall)
    except ValueError:  # UserError included
        pass  # no mask in the optimizer (not built with masked()), or no prunable leaf
    return out
