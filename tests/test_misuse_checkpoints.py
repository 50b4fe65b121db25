"""A damaged run directory never blocks a run and never loses an intact checkpoint; metrics never
hold an epoch twice; a failed save stops the run; DONE.json that is not a summary is rewritten.

Each case damages a finished (or half-finished) run the way a kill, a full disk or a user does,
re-runs it, and checks the result equals an uninterrupted run."""

import errno
import json
import shutil
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cut_short_background_write, synthetic_dataset

from signticket import optim
from signticket.checkpoint import CORRUPT_PREFIX, Checkpointer, CheckpointSaveError
from signticket.errors import UserError
from signticket.fit import SaveCadence, fit
from signticket.metrics import MetricsWriter
from signticket.sharding import make_mesh
from signticket.train import Engine

sys.path.insert(0, str(Path(__file__).parent))
from _engine_run import TinyNet

EPOCHS = 4


def _run(directory: Path, epochs: int = EPOCHS, checkpoint_every: int = 1, stop_after=None,
         **fit_kwargs):
    """Fit the tiny net; returns (state, summary, epochs trained in this call). ``stop_after``:
    the epoch after which a simulated kill (KeyboardInterrupt) stops it."""
    ds = synthetic_dataset(96, 40, flip=True)
    engine = Engine(TinyNet(), optim.masked_updates(optim.sgd(0.05, 0.9, 5e-4)), ds.preprocess,
                    make_mesh())
    state = engine.init_state(jax.random.PRNGKey(0), ds.train_images)
    trained = []

    def hook(epoch, s):
        trained.append(epoch)
        if epoch == stop_after:
            raise KeyboardInterrupt
        return s

    ckpt = Checkpointer(directory)
    try:
        state, summary = fit(engine, state, ds, epochs=epochs, batch_size=16, data_seed=3,
                             checkpointer=ckpt, metrics=MetricsWriter(directory / "metrics.jsonl"),
                             checkpoint_every=checkpoint_every, on_epoch_end=hook, progress=False,
                             **fit_kwargs)
    finally:
        ckpt.close()
    return state, summary, trained


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted finished run (checkpoints 3 and 4 kept, DONE.json)."""
    root = tmp_path_factory.mktemp("ref")
    state, summary, trained = _run(root / "run")
    assert trained == [1, 2, 3, 4]
    return root / "run", state, summary


def _copy(reference, tmp_path) -> Path:
    directory = tmp_path / "run"
    shutil.copytree(reference[0], directory)
    return directory


def _metrics_epochs(directory: Path) -> list[int]:
    return [r["epoch"] for r in MetricsWriter(directory / "metrics.jsonl").read()]


def _moved(directory: Path) -> list[str]:
    """Steps moved aside as corrupt."""
    moved = (directory / "checkpoints").glob(CORRUPT_PREFIX + "*")
    return sorted(p.name.split("-")[1] for p in moved)


def _truncate_files(step_dir: Path) -> None:
    for f in (step_dir / "default").rglob("*"):
        if f.is_file() and f.stat().st_size > 1:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


DAMAGE = {
    "truncated_files": lambda d: _truncate_files(d / "checkpoints" / "4"),
    "metadata_removed": lambda d: (d / "checkpoints" / "4" / "default" / "_METADATA").unlink(),
    "default_removed": lambda d: shutil.rmtree(d / "checkpoints" / "4" / "default"),
}
# Orbax bookkeeping removed while every array is intact: the step still restores exactly.
HARMLESS = {
    "step_metadata_removed": lambda d: (d / "checkpoints" / "4" / "_CHECKPOINT_METADATA").unlink(),
    "commit_marker_removed": lambda d: (d / "checkpoints" / "4" / "commit_success.txt").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_step_is_moved_aside_and_run_resumes_from_intact_one(
        reference, tmp_path, damage, caplog):
    directory = _copy(reference, tmp_path)
    DAMAGE[damage](directory)
    state, summary, trained = _run(directory)
    assert trained == [4]  # resumed from the intact step 3, not from scratch
    assert _moved(directory) == ["4"]  # only the damaged step; 3 was never called corrupt
    warnings = [r.getMessage() for r in caplog.records if "moved it aside" in r.getMessage()]
    assert len(warnings) == 1 and "step 4" in warnings[0] and CORRUPT_PREFIX + "4" in warnings[0]
    chex.assert_trees_all_close(state.params, reference[1].params, atol=1e-6)
    assert summary == pytest.approx(reference[2], abs=1e-6)
    assert _metrics_epochs(directory) == [1, 2, 3, 4]
    # Every later re-run simply reuses the finished run: no retraining, no error, nothing moved.
    for _ in range(2):
        again_state, again, trained = _run(directory)
        assert trained == [] and again == summary and _moved(directory) == ["4"]
    chex.assert_trees_all_equal(again_state.params, state.params)


@pytest.mark.parametrize("damage", sorted(HARMLESS))
def test_intact_step_is_reused_not_called_corrupt(reference, tmp_path, damage):
    directory = _copy(reference, tmp_path)
    HARMLESS[damage](directory)
    state, summary, trained = _run(directory)
    assert trained == [] and summary == reference[2] and _moved(directory) == []
    chex.assert_trees_all_equal(state.params, reference[1].params)


def test_empty_step_directory_is_moved_aside_and_finished_run_reused(reference, tmp_path):
    directory = _copy(reference, tmp_path)
    (directory / "checkpoints" / "99").mkdir()
    state, summary, trained = _run(directory)
    assert trained == [] and summary == reference[2]
    assert _moved(directory) == ["99"]
    assert sorted(p.name for p in (directory / "checkpoints").iterdir() if p.name.isdigit()) \
        == ["3", "4"]
    chex.assert_trees_all_equal(state.params, reference[1].params)


def test_corrupt_done_json_is_rewritten_not_a_traceback(reference, tmp_path, caplog):
    directory = _copy(reference, tmp_path)
    (directory / "DONE.json").write_text("[]")
    _, summary, trained = _run(directory)
    assert trained == []  # the checkpoint of the last epoch is intact: only the summary is redone
    assert summary == pytest.approx(reference[2], abs=1e-6)
    assert json.loads((directory / "DONE.json").read_text())["epoch"] == EPOCHS
    assert any("DONE.json" in r.getMessage() for r in caplog.records)


# --- metrics.jsonl never holds an epoch twice --------------------------------------------------


def test_metrics_without_checkpoint_are_dropped_on_rerun(reference, tmp_path):
    directory = _copy(reference, tmp_path)
    shutil.rmtree(directory / "checkpoints")
    (directory / "DONE.json").unlink()
    state, _, trained = _run(directory)
    assert trained == [1, 2, 3, 4]
    assert _metrics_epochs(directory) == [1, 2, 3, 4]
    chex.assert_trees_all_close(state.params, reference[1].params, atol=1e-6)


class Killed(BaseException):
    pass


def test_kill_during_first_checkpoint_save_leaves_no_duplicate_epochs(tmp_path, monkeypatch):
    directory = tmp_path / "run"
    real_save = Checkpointer.save

    def dies(self, step, state, **kwargs):  # as a SIGKILL mid-save: metrics, no checkpoint
        raise Killed

    monkeypatch.setattr(Checkpointer, "save", dies)
    with pytest.raises(Killed):
        _run(directory)
    assert _metrics_epochs(directory) == [1]
    monkeypatch.setattr(Checkpointer, "save", real_save)
    _, _, trained = _run(directory)
    assert trained == [1, 2, 3, 4]
    assert _metrics_epochs(directory) == [1, 2, 3, 4]


def test_metrics_past_the_checkpoint_are_dropped(tmp_path):
    """checkpoint_every=2: a kill after epoch 3's record resumes from epoch 2's checkpoint."""
    directory = tmp_path / "run"
    _run(directory, epochs=2, checkpoint_every=2)
    MetricsWriter(directory / "metrics.jsonl").write({"epoch": 3, "step": 18, "train_loss": 1.0})
    _, _, trained = _run(directory, epochs=4, checkpoint_every=2)
    assert trained == [3, 4]
    assert _metrics_epochs(directory) == [1, 2, 3, 4]


# --- a failed save stops the run -----------------------------------------------------------------


def test_full_disk_on_save_stops_the_run_with_one_message(tmp_path, monkeypatch):
    directory = tmp_path / "run"
    calls = []

    def full(self, *args, **kwargs):
        calls.append(args[0])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Checkpointer, "save", _wrap_manager_save(full))
    with pytest.raises(CheckpointSaveError, match=r"no space left.*step 1") as info:
        _run(directory)
    assert calls == [1] and _metrics_epochs(directory) == [1]  # epoch 2 was never trained
    assert str(directory / "checkpoints") in str(info.value)
    monkeypatch.undo()
    _, _, trained = _run(directory)  # after freeing space: a clean restart, one history
    assert trained == [1, 2, 3, 4] and _metrics_epochs(directory) == [1, 2, 3, 4]


def test_background_write_failure_stops_the_run_one_epoch_later(reference, tmp_path,
                                                                 monkeypatch):
    """fit writes a checkpoint while the next epoch trains: when that write fails (the disk
    filled meanwhile), the wait at the next save raises it, naming the step; the re-run resumes
    from the last step written and ends equal to an uninterrupted run."""
    directory = tmp_path / "run"
    real = Checkpointer.wait

    def wait(self):
        if self._pending == 2:
            cut_short_background_write(self, 2)
        return real(self)

    monkeypatch.setattr(Checkpointer, "wait", wait)
    with pytest.raises(CheckpointSaveError, match=r"no space left.*step 2 in"):
        _run(directory)
    assert _metrics_epochs(directory) == [1, 2, 3]  # epoch 3 trained while step 2 was written
    monkeypatch.undo()
    state, summary, trained = _run(directory)
    assert trained == [2, 3, 4] and _metrics_epochs(directory) == [1, 2, 3, 4]
    chex.assert_trees_all_equal(state.params, reference[1].params)
    assert summary == reference[2]


def test_background_save_keeps_the_values_of_its_step(tmp_path):
    """save(wait=False) writes what ``state`` held at the call, even when the caller's buffers
    are donated and overwritten before the write ends (as the next train step does)."""
    state = {"w": jnp.arange(1024.0), "n": jnp.zeros((), jnp.int32)}
    expected = jax.tree.map(np.asarray, jax.device_get(state))
    expected = jax.tree.map(np.copy, expected)
    step = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
    ckpt = Checkpointer(tmp_path / "run")
    ckpt.save(1, state, wait=False)
    for _ in range(3):
        state = step(state)
    ckpt.wait()
    _, restored = ckpt.restore(jax.tree.map(jnp.zeros_like, state))
    ckpt.close()
    chex.assert_trees_all_equal(restored, expected)


def _wrap_manager_save(raiser):
    """Checkpointer.save with orbax's save replaced by ``raiser``: exercises the real error
    handling around it."""
    real = Checkpointer.save

    def save(self, step, state, **kwargs):
        self.manager.save = lambda *a, **k: raiser(self, *a, **k)
        return real(self, step, state, **kwargs)

    return save


def test_metrics_line_cut_by_a_kill_is_dropped(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    writer.write({"epoch": 1, "train_loss": 1.0})
    with writer.path.open("a") as f:
        f.write('{"epoch": 2, "train_lo')  # killed mid-write
    writer.truncate_after(1)
    writer.write({"epoch": 2, "train_loss": 0.5})
    assert [r["epoch"] for r in writer.read()] == [1, 2]
    assert len(writer.path.read_text().splitlines()) == 2


def test_metrics_untouched_when_nothing_to_drop(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    writer.write({"epoch": 1, "train_loss": 0.1 + 0.2})
    before = writer.path.stat().st_mtime_ns, writer.path.read_bytes()
    writer.truncate_after(1)
    assert (writer.path.stat().st_mtime_ns, writer.path.read_bytes()) == before


# --- how often fit saves -------------------------------------------------------------------------


def _saved_steps(monkeypatch) -> list[int]:
    steps: list[int] = []
    real_save = Checkpointer.save

    def spy(self, step, *args, **kwargs):
        steps.append(step)
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", spy)
    return steps


def test_min_interval_skips_saves_and_changes_no_result(reference, tmp_path, monkeypatch):
    """A run that saves only its last epoch ends equal to the reference, which saved each."""
    saved = _saved_steps(monkeypatch)
    state, summary, trained = _run(tmp_path / "run", checkpoint_min_interval_s=3600.0)
    assert trained == [1, 2, 3, 4] and saved == [4]
    chex.assert_trees_all_equal(state.params, reference[1].params)
    assert summary == reference[2]
    assert MetricsWriter(tmp_path / "run" / "metrics.jsonl").read() == \
        MetricsWriter(reference[0] / "metrics.jsonl").read()


def test_kill_before_the_interval_resumes_from_scratch_equal(reference, tmp_path):
    """Killed after epoch 3 with no save yet: the re-run trains from epoch 1, records each epoch
    once and ends equal to the uninterrupted reference."""
    directory = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run(directory, stop_after=3, checkpoint_min_interval_s=3600.0)
    assert _metrics_epochs(directory) == [1, 2]  # epoch 3's record comes after its hook
    assert Checkpointer(directory).latest_step() is None
    state, summary, trained = _run(directory, checkpoint_min_interval_s=3600.0)
    assert trained == [1, 2, 3, 4]
    assert _metrics_epochs(directory) == [1, 2, 3, 4]
    chex.assert_trees_all_equal(state.params, reference[1].params)
    assert summary == reference[2]


def test_save_cadence_waits_out_the_interval_and_always_saves_the_last():
    now = [0.0]
    cadence = SaveCadence(every=2, min_interval_s=10.0, clock=lambda: now[0])
    due = []
    for epoch, t in zip(range(1, 9), (3, 6, 9, 12, 15, 18, 21, 24), strict=True):
        now[0] = t
        if cadence.due(epoch, 8):
            due.append(epoch)
            cadence.saved()
    # Epoch 2 (6 s) is too soon; 4 (12 s) is due; 6 (18 s, 6 s after) too soon; 8 is the last.
    assert due == [4, 8]
    every = SaveCadence(every=3)
    assert [e for e in range(1, 8) if every.due(e, 7)] == [3, 6, 7]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "60", True])
def test_bad_min_interval_is_one_clear_error(tmp_path, bad):
    with pytest.raises(UserError, match="checkpoint_min_interval_s must be a finite number"):
        _run(tmp_path / "run", checkpoint_min_interval_s=bad)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
