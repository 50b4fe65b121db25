"""Runs finished in the background (signticket.finishing): a run's last checkpoint write
overlaps the next run, and nothing a synchronous finish guarantees is lost: DONE.json only
after the last write, the run directory locked until then, a failed write raised (at most one
run later) and resumed from, the same files and numbers."""

import contextlib
import json
from pathlib import Path

import chex
import jax
import pytest
from conftest import cut_short_background_write, restored, synthetic_dataset
from ml_collections import ConfigDict

from signticket import finishing
from signticket.checkpoint import (
    DONE_FILE,
    Checkpointer,
    CheckpointSaveError,
    RunLockedError,
    lock_run_dir,
)
from signticket.runs import train_run


def _config(seed: int, epochs: int = 2) -> ConfigDict:
    return ConfigDict({
        "seed": seed, "data_seed": 0, "model": {"name": "mlp", "kwargs": {"widths": (8,)}},
        "data": {"name": "synthetic", "train_subset": 0, "test_subset": 0},
        "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9,
                      "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0},
        "batch_size": 16, "epochs": epochs,
    })


def _dataset():
    return synthetic_dataset(n=64, n_test=32)


def _done(directory: Path) -> dict:
    done = json.loads((directory / DONE_FILE).read_text())
    done.pop("provenance")
    return done


def _locked(directory: Path) -> bool:
    try:
        with lock_run_dir(directory):
            return False
    except RunLockedError:
        return True


def test_runs_finished_in_the_background_equal_runs_finished_in_place(tmp_path):
    """Inside the block a run returns with its directory still locked (its last write and
    DONE.json under way); the next run's end closes it. Files and numbers equal runs that
    finished before returning."""
    ds = _dataset()
    in_place = [train_run(_config(s), ds, runs_root=tmp_path / "a", progress=False)
                for s in (0, 1)]
    with finishing.background_finishes():
        first = train_run(_config(0), ds, runs_root=tmp_path / "b", progress=False)
        assert _locked(first.directory)  # held until its finish is closed
        second = train_run(_config(1), ds, runs_root=tmp_path / "b", progress=False)
        assert not _locked(first.directory)  # closed at the end of the next run
        assert _locked(second.directory)
    assert not _locked(second.directory)
    for a, b in zip(in_place, (first, second), strict=True):
        assert a.directory.name == b.directory.name
        assert _done(a.directory) == _done(b.directory) and a.summary == b.summary
        chex.assert_trees_all_equal(a.state.params, b.state.params)
        step_a, restored_a = restored(a.directory, a.state)
        step_b, restored_b = restored(b.directory, b.state)
        assert step_a == step_b == 2
        chex.assert_trees_all_equal(restored_a.params, restored_b.params)


def test_outside_the_block_a_run_is_finished_when_it_returns(tmp_path):
    res = train_run(_config(0), _dataset(), runs_root=tmp_path, progress=False)
    assert (res.directory / DONE_FILE).exists() and not _locked(res.directory)


def test_a_run_trained_again_in_the_block_waits_for_its_finish(tmp_path):
    """The same run twice (a pipeline reusing a run): the second call closes the first's
    finish, then reuses the finished run instead of failing on its lock."""
    ds = _dataset()
    with finishing.background_finishes():
        first = train_run(_config(0), ds, runs_root=tmp_path, progress=False)
        again = train_run(_config(0), ds, runs_root=tmp_path, progress=False)
    assert again.directory == first.directory and again.summary == first.summary
    assert (first.directory / DONE_FILE).exists()


def _last_write_fails(monkeypatch, directory_name: str) -> None:
    """Make the last write (step 2) of the run in ``directory_name`` fail in the background,
    as a disk that filled meanwhile: the step is cut short and orbax's wait raises ENOSPC."""
    real = Checkpointer._wait_for_write

    def wait_for_write(self):
        if self.directory.name == directory_name and self._pending == 2:
            cut_short_background_write(self, 2)
        return real(self)

    monkeypatch.setattr(Checkpointer, "_wait_for_write", wait_for_write)


def test_a_failed_last_write_is_raised_by_the_next_run_and_resumed_from(tmp_path, monkeypatch):
    """Run 1's last write fails in the background: the next run raises it when it ends, as
    CheckpointSaveError naming the step and directory (its own work kept); run 1 has no
    DONE.json, and a re-run resumes it from its last written step to the numbers of an
    uninterrupted run."""
    ds = _dataset()
    reference = train_run(_config(0), ds, runs_root=tmp_path / "ref", progress=False)
    root = tmp_path / "runs"
    name = reference.directory.name
    _last_write_fails(monkeypatch, name)
    with pytest.raises(CheckpointSaveError,
                       match=rf"no space left.*step 2 in .*{name}/checkpoints"):
        with finishing.background_finishes():
            train_run(_config(0), ds, runs_root=root, progress=False)
            train_run(_config(1), ds, runs_root=root, progress=False)
    assert not (root / name / DONE_FILE).exists()
    assert not _locked(root / name)
    second = next(p for p in root.iterdir() if p.name != name)
    assert (second / DONE_FILE).exists()  # the run that raised it finished itself
    monkeypatch.undo()
    again = train_run(_config(0), ds, runs_root=root, progress=False)
    assert again.summary == reference.summary
    assert _done(again.directory) == _done(reference.directory)
    chex.assert_trees_all_equal(again.state.params, reference.state.params)


def test_an_error_in_the_block_still_finishes_the_pending_runs(tmp_path):
    ds = _dataset()
    with pytest.raises(RuntimeError, match="the pipeline failed"):
        with finishing.background_finishes():
            res = train_run(_config(0), ds, runs_root=tmp_path, progress=False)
            raise RuntimeError("the pipeline failed")
    assert (res.directory / DONE_FILE).exists() and not _locked(res.directory)


def test_nested_blocks_are_the_outer_one(tmp_path):
    ds = _dataset()
    with finishing.background_finishes():
        with finishing.background_finishes():
            res = train_run(_config(0), ds, runs_root=tmp_path, progress=False)
        assert finishing.active() and _locked(res.directory)
    assert not finishing.active() and not _locked(res.directory)
    assert jax.process_count() == 1


def test_defer_outside_the_block_names_the_block(tmp_path):
    ckpt = Checkpointer(tmp_path / "run")
    try:
        with pytest.raises(RuntimeError, match=r"background_finishes\(\) block"):
            finishing.defer(tmp_path / "run", ckpt, contextlib.ExitStack())
    finally:
        ckpt.close()
