"""The epoch loop: train, evaluate, checkpoint, resume, log — for any :class:`Engine`."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence

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
    member = Member(state, data_seed, checkpointer, metrics, on_epoch_end, desc, learning_rate)
    [(state, summary)] = fit_lockstep(
        engine, [member], dataset, epochs=epochs, batch_size=batch_size, eval_every=eval_every,
        checkpoint_every=checkpoint_every, checkpoint_min_interval_s=checkpoint_min_interval_s,
        progress=progress, finish_in_background=finish_in_background)
    return state, summary


@dataclasses.dataclass
class Member:
    """One run of :func:`fit_lockstep`: its state and everything else that is its own."""

    state: TrainState
    data_seed: int = 0
    checkpointer: Checkpointer | None = None
    metrics: metrics_lib.MetricWriter | None = None
    on_epoch_end: EpochHook | None = None
    desc: str = "train"
    learning_rate: optax.ScalarOrSchedule | None = None


def fit_lockstep(
    engine: Engine,
    members: Sequence[Member],
    dataset: data_lib.Dataset | data_lib.Source,
    *,
    epochs: int,
    batch_size: int,
    eval_every: int = 1,
    checkpoint_every: int = 1,
    checkpoint_min_interval_s: float = 0.0,
    progress: bool = True,
    finish_in_background: bool = False,
) -> list[tuple[TrainState, dict[str, float]]]:
    """:func:`fit` of several runs of one ``engine`` side by side; ``(state, summary)`` per
    member, in order.

    The members train epoch by epoch together: their steps are one program for all of them
    (:meth:`~signticket.train.Engine.steps_on_device`, :data:`STEPS_PER_CALL` steps a call,
    where the epoch lies on the devices; else :meth:`~signticket.train.Engine.lockstep_train_step`,
    a step a call), and members with the same ``data_seed`` share its batches. Everything else
    stays each member's own: its checkpoints and their cadence, resumption, metrics, hook,
    evaluation and ``DONE.json``. Each ends bit-identical to :func:`fit` of it alone (what a
    small model gains is the cores one run leaves idle and one dispatch instead of one per
    run). A finished member is
    restored, not trained; members restored to different epochs train in groups of equal start,
    one group after another. A NaN/inf loss in any member stops them all before that epoch is
    recorded; each keeps its last checkpoint. The epoch time each records is the group's.
    Each member's ``state`` is donated to the steps (``member.state`` follows the newest one).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        low = 0 if name == "epochs" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
    if not members:
        raise UserError("fit_lockstep: no members to train")
    runs = [_Run(m, SaveCadence(checkpoint_every, checkpoint_min_interval_s)) for m in members]
    groups: dict[int, list[_Run]] = {}
    for run in runs:
        start = run.resume(epochs)
        if run.summary is None:
            groups.setdefault(start, []).append(run)
    source = data_lib.as_source(dataset)  # one device copy of an in-memory dataset
    for start, group in sorted(groups.items()):
        _train_group(engine, group, source, start=start, epochs=epochs, batch_size=batch_size,
                     eval_every=eval_every, progress=progress,
                     finish_in_background=finish_in_background)
    return [(run.member.state, run.summary) for run in runs]


@dataclasses.dataclass(eq=False)
class _Run:
    """A member while it trains: its cadence, sums of the epoch, last test metrics, summary."""

    member: Member
    cadence: SaveCadence
    test: dict[str, float] = dataclasses.field(default_factory=dict)
    summary: dict[str, float] | None = None

    def resume(self, epochs: int) -> int:
        """Restore the newest checkpoint; returns the epoch to continue after (a finished run
        gets its ``summary``)."""
        ckpt = self.member.checkpointer
        if ckpt is None or ckpt.latest_step() is None:
            return 0
        try:
            start, self.member.state = ckpt.restore(self.member.state)
        except NoIntactCheckpointError as e:
            log.warning("%s; training from the start", e)
            return 0
        done = ckpt.done()
        if done is not None and start >= epochs:
            provenance.check_reuse(ckpt.directory, done)
            self.summary = {k: v for k, v in done.items() if k.startswith("test_")}
        else:
            log.info("resuming %s at epoch %d", ckpt.directory, start + 1)
        return start

    def end_epoch(self, engine: Engine, source: data_lib.Source, epoch: int, epochs: int,
                  train: dict[str, float], eval_every: int, timing: dict[str, float],
                  progress: bool, bar: tqdm) -> None:
        """Hook, evaluation, metrics record and checkpoint of this run after ``epoch``."""
        m = self.member
        in_use = _schedule_and_mask(m.state, m.learning_rate)  # before a hook changes the mask
        if m.on_epoch_end is not None:
            with phase("epoch hooks"):
                m.state = m.on_epoch_end(epoch, m.state)
        record = {
            "epoch": epoch,
            "step": int(m.state.step),
            **{f"train_{k}": v for k, v in train.items()},
            **in_use,
        }
        if epoch % eval_every == 0 or epoch == epochs:
            with phase("evaluation"):
                self.test = evaluate(engine, m.state, source)
            record.update({f"test_{k}": v for k, v in self.test.items()})
        bar.set_postfix(loss=f"{train['loss']:.3f}",
                        test_acc=f"{self.test.get('accuracy', 0):.3f}")
        record.update(timing)
        if not progress:
            log.info(metrics_lib.format_epoch(m.desc, record, epochs))
        if m.metrics is not None:
            m.metrics.write(record)
        interrupts.check()
        if m.checkpointer is not None and self.cadence.due(epoch, epochs):
            with phase("checkpointing"):
                # Written while the next epoch trains.
                m.checkpointer.save(epoch, m.state, wait=False)
            self.cadence.saved()

    def finish(self, engine: Engine, source: data_lib.Source, epochs: int,
               in_background: bool) -> None:
        """Final evaluation (if the last epoch had none), last save and ``DONE.json``."""
        m = self.member
        if not self.test:
            with phase("evaluation"):
                self.test = evaluate(engine, m.state, source)
        self.summary = {f"test_{k}": v for k, v in self.test.items()}
        if m.checkpointer is not None:
            with phase("checkpointing"):
                if m.checkpointer.latest_step() is None:
                    m.checkpointer.save(epochs, m.state)
                m.checkpointer.mark_done({"epoch": epochs, **self.summary},
                                         wait=not in_background)


#: One dispatch adds every member's step metrics to its epoch sums.
_add_metrics = jax.jit(lambda sums, metrics: jax.tree.map(jnp.add, sums, metrics))


def _train_group(engine: Engine, runs: list[_Run], source: data_lib.Source, *, start: int,
                 epochs: int, batch_size: int, eval_every: int, progress: bool,
                 finish_in_background: bool) -> None:
    """Train ``runs`` (all restored to epoch ``start``) from there to ``epochs`` together."""
    for run in runs:
        if run.member.metrics is not None:
            # Records past the restored state (a kill between the metrics write and the
            # checkpoint commit, a removed or damaged checkpoint) describe epochs about to be
            # redone.
            run.member.metrics.truncate_after(start)
    n_steps = data_lib.steps_per_epoch(source.num_train, batch_size)
    seeds = list(dict.fromkeys(run.member.data_seed for run in runs))
    slots = [seeds.index(run.member.data_seed) for run in runs]
    label = runs[0].member.desc + (f" x{len(runs)}" if len(runs) > 1 else "")
    bar = tqdm(
        total=epochs * n_steps,
        initial=start * n_steps,
        desc=label,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    with interrupts.ctrl_c_reraised():  # a Ctrl-C swallowed by a GC callback stops it too
        for epoch in range(start + 1, epochs + 1):
            started = time.perf_counter()
            with phase("training"):
                trains, taken = _train_epoch(engine, runs, source, epoch, batch_size, seeds, slots,
                                             bar)
                if taken == 0:
                    raise UserError(f"epoch {epoch}: the data source gave no batch of {batch_size}")
            seconds = time.perf_counter() - started
            for run, train in zip(runs, trains, strict=True):
                check_finite(train, f"epoch {epoch}" + (
                    f" of {run.member.desc}" if len(runs) > 1 else ""))
            for run, train in zip(runs, trains, strict=True):
                run.end_epoch(engine, source, epoch, epochs, train, eval_every,
                              _timing(seconds, taken, batch_size), progress, bar)
    bar.close()
    for run in runs:
        run.finish(engine, source, epochs, finish_in_background)


#: Steps per program call when the epoch lies on the devices (:meth:`Engine.steps_on_device`).
#: Each call costs the host a dispatch, and each chunk end is where an interrupt is seen and the
#: progress bar moves; 32 steps took the MLP's per-step host work out of its 1 ms step
#: (docs/performance.md) while a ResNet-20 chunk stays a few seconds on 2 cores.
STEPS_PER_CALL = 32


def _train_epoch(engine: Engine, runs: list[_Run], source: data_lib.Source, epoch: int,
                 batch_size: int, seeds: list[int], slots: list[int], bar: tqdm
                 ) -> tuple[list[dict[str, float]], int]:
    """One epoch of every run's steps; each run's mean train metrics and the step count."""
    states = [run.member.state for run in runs]
    all_sums = [{"loss": jnp.zeros(()), "accuracy": jnp.zeros(())} for _ in runs]
    taken = 0
    try:
        if isinstance(source, data_lib.DeviceEpochs):  # many steps per call
            epochs = [source.device_epoch(epoch, batch_size, seed, engine.mesh)
                      for seed in seeds]
            steps_fn = engine.steps_on_device(tuple(slots))
            split, orders = epochs[0].data, [e.order for e in epochs]
            for lo in range(0, epochs[0].steps, STEPS_PER_CALL):
                hi = min(epochs[0].steps, lo + STEPS_PER_CALL)
                states, all_sums = steps_fn(states, all_sums, split.images, split.labels,
                                            orders, np.int32(lo), np.int32(hi))
                interrupts.check()
                taken = hi
                bar.update(hi - lo)
        else:
            step, add = _step_and_sum(engine, len(runs))
            for batches in zip(*(source.train_epoch(epoch, batch_size, seed, engine.mesh)
                                 for seed in seeds), strict=True):
                states, ms = step(states, [batches[slot] for slot in slots])
                interrupts.check()
                all_sums = add(all_sums, ms)
                taken += 1
                bar.update()
    finally:  # the donated states are gone: the members hold the newest ones
        for run, state in zip(runs, states, strict=True):
            run.member.state = state
    # The epoch's one host sync.
    return [{k: float(v) / max(taken, 1) for k, v in sums.items()} for sums in all_sums], taken


def _step_and_sum(engine: Engine, members: int) -> tuple[Callable, Callable]:
    """One step of every member per call, for sources whose batches come from the host, and
    the metric sums."""
    if members == 1:  # the one-run program and eager metric sums, as fit has always run

        def step(states, batches):
            state, m = engine.train_step(states[0], batches[0])
            return [state], [m]

        def add(all_sums, ms):
            return [jax.tree.map(jnp.add, all_sums[0], ms[0])]

        return step, add
    return engine.lockstep_train_step(members), _add_metrics


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
