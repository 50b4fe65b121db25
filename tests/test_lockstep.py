"""Runs trained side by side (fit_lockstep, runs.train_runs) end bit-identical to each run
trained alone: same params, optimizer state, metrics and files. Resuming, a NaN in one member,
finished members and bad arguments behave as they do for one run."""

import json
import shutil
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from conftest import restored, synthetic_dataset
from ml_collections import ConfigDict

from signticket import finishing, optim
from signticket.checkpoint import DONE_FILE, Checkpointer
from signticket.errors import UserError
from signticket.fit import Member, fit, fit_lockstep
from signticket.metrics import MetricsWriter
from signticket.run_desc import Input, RunDesc
from signticket.runs import train_run, train_runs
from signticket.sharding import make_mesh
from signticket.train import Engine, NonFiniteLossError

EPOCHS = 3


def _dataset():
    return synthetic_dataset(64, 32, flip=True)


def _engine(ds):
    from signticket import models

    net = models.get("mlp", num_classes=ds.num_classes, widths=(16, 8))
    return Engine(net, optim.masked_updates(optim.sgd(0.05, 0.9, 5e-4)), ds.preprocess,
                  make_mesh())


def _state(engine, ds, seed):
    return engine.init_state(jax.random.PRNGKey(seed), ds.train_images)


#: (init seed, data seed) of the members: two share a data order, one has its own.
MEMBERS = ((0, 5), (1, 5), (2, 9))


def _alone(ds, engine, seed, data_seed, hook=None):
    return fit(engine, _state(engine, ds, seed), ds, epochs=EPOCHS, batch_size=16,
               data_seed=data_seed, on_epoch_end=hook, progress=False)


def test_lockstep_members_equal_each_member_trained_alone():
    ds = _dataset()
    engine = _engine(ds)
    alone = [_alone(ds, engine, s, d) for s, d in MEMBERS]
    seen = []

    def hook(epoch, state):  # a member's own hook still runs after each of its epochs
        seen.append(epoch)
        return state

    members = [Member(_state(engine, ds, s), d, on_epoch_end=hook if i == 2 else None)
               for i, (s, d) in enumerate(MEMBERS)]
    together = fit_lockstep(engine, members, ds, epochs=EPOCHS, batch_size=16, progress=False)
    assert seen == [1, 2, 3]
    for (state, summary), (ref_state, ref_summary) in zip(together, alone, strict=True):
        chex.assert_trees_all_equal(state, ref_state)  # bit-identical, not close
        assert summary == ref_summary
    # The members really differ (a test of three copies of one run would pass anyway).
    assert together[0][1] != together[1][1] or not np.array_equal(
        jax.tree.leaves(together[0][0].params)[0], jax.tree.leaves(together[1][0].params)[0])


def _config(seed: int, data_seed: int = 0, epochs: int = EPOCHS, **extra) -> ConfigDict:
    return ConfigDict({
        "seed": seed, "data_seed": data_seed,
        "model": {"name": "mlp", "kwargs": {"widths": (16, 8)}},
        "data": {"name": "synthetic", "train_subset": 0, "test_subset": 0},
        "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9,
                      "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 0},
        "batch_size": 16, "epochs": epochs, **extra,
    })


def _files(directory: Path) -> dict:
    done = json.loads((directory / DONE_FILE).read_text())
    done.pop("provenance")
    return {"metrics": (directory / "metrics.jsonl").read_text(), "done": done,
            "config": (directory / "config.json").read_text()}


def test_train_runs_side_by_side_leave_the_files_of_runs_trained_alone(tmp_path):
    """Same directory names, metrics.jsonl, DONE.json and final checkpoint, with and without
    lockstep; a run of another engine (other epochs) trains on its own in the same call."""
    ds = _dataset()
    configs = [_config(0, 5), _config(1, 5), _config(2, 9), _config(3, 5, epochs=2)]
    alone = [train_run(c, ds, runs_root=tmp_path / "alone", progress=False) for c in configs]
    together = train_runs(configs, ds, runs_root=tmp_path / "together", progress=False,
                          lockstep=4)
    for a, t in zip(alone, together, strict=True):
        assert a.directory.name == t.directory.name
        assert _files(a.directory) == _files(t.directory)
        assert a.summary == t.summary
        chex.assert_trees_all_equal(a.state, t.state)
        chex.assert_trees_all_equal(restored(a.directory, a.state),
                                    restored(t.directory, t.state))


def test_lockstep_groups_hold_at_most_lockstep_runs(tmp_path, monkeypatch):
    import signticket.runs as runs_lib

    sizes = []
    real = runs_lib.fit_lockstep

    def spy(engine, members, *args, **kwargs):
        sizes.append(len(members))
        return real(engine, members, *args, **kwargs)

    monkeypatch.setattr(runs_lib, "fit_lockstep", spy)
    ds = _dataset()
    train_runs([_config(s, epochs=1) for s in range(5)], ds, runs_root=tmp_path,
               progress=False, lockstep=2)
    assert sizes == [2, 2, 1]
    sizes.clear()
    train_runs([_config(s, epochs=1) for s in range(5, 7)], ds, runs_root=tmp_path,
               progress=False)  # the default: one after another
    assert sizes == [1, 1]
    sizes.clear()
    # A caller's own optimizer builds an engine of its own: never side by side.
    tx = optim.masked_updates(optim.sgd(0.05, 0.9, 5e-4))
    own = [RunDesc(_config(s, epochs=1), name="own", tx=Input(tx, "test sgd")) for s in (7, 8)]
    train_runs(own, ds, runs_root=tmp_path, progress=False, lockstep=2)
    assert sizes == [1, 1]


def test_killed_lockstep_resumes_to_the_uninterrupted_result(tmp_path):
    """Killed after epoch 2; one member's checkpoints are then lost, so the re-run restores the
    members to different epochs (2, 2, 0): they train in two groups and every run ends equal
    to the uninterrupted ones, with each epoch recorded once."""
    ds = _dataset()
    configs = [_config(s, d) for s, d in MEMBERS]
    reference = train_runs(configs, ds, runs_root=tmp_path / "ref", progress=False, lockstep=3)

    def kill_after_2(epoch, state):
        if epoch == 2:
            raise KeyboardInterrupt
        return state

    root = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train_runs(configs, ds, runs_root=root, progress=False, lockstep=3,
                   on_epoch_end=[None, None, kill_after_2])
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    assert all(not (d / DONE_FILE).exists() for d in dirs)
    lost = next(d for d in dirs if json.loads((d / "config.json").read_text())["seed"] == 2)
    shutil.rmtree(lost / "checkpoints")
    again = train_runs(configs, ds, runs_root=root, progress=False, lockstep=3)
    for ref, res in zip(reference, again, strict=True):
        assert _files(ref.directory) == _files(res.directory)
        chex.assert_trees_all_equal(ref.state, res.state)
        epochs = [r["epoch"] for r in MetricsWriter(res.directory / "metrics.jsonl").read()]
        assert epochs == [1, 2, 3]


def test_finished_members_are_restored_not_trained(tmp_path):
    ds = _dataset()
    first = train_runs([_config(0), _config(1)], ds, runs_root=tmp_path, progress=False,
                       lockstep=2)
    trained = []

    def hook(epoch, state):
        trained.append(epoch)
        return state

    again = train_runs([_config(0), _config(1), _config(2)], ds, runs_root=tmp_path,
                       progress=False, lockstep=3, on_epoch_end=[hook, hook, hook])
    assert trained == [1, 2, 3]  # only the new run
    for a, b in zip(first, again[:2], strict=True):
        chex.assert_trees_all_equal(a.state.params, b.state.params)
        assert a.summary == b.summary


def test_nan_in_one_member_stops_all_naming_it(tmp_path):
    ds = _dataset()
    engine = _engine(ds)
    poisoned = _state(engine, ds, 1)
    poisoned = poisoned.replace(params=jax.tree.map(lambda x: x * np.nan, poisoned.params))
    members = [Member(_state(engine, ds, 0), 0, desc="good"),
               Member(poisoned, 0, desc="bad", checkpointer=Checkpointer(tmp_path / "bad"))]
    try:
        with pytest.raises(NonFiniteLossError, match="epoch 1 of bad"):
            fit_lockstep(engine, members, ds, epochs=2, batch_size=16, progress=False)
        assert members[1].checkpointer.latest_step() is None  # nothing bad was saved
    finally:
        members[1].checkpointer.close()


def test_background_finishes_of_lockstep_runs_equal_finishes_in_place(tmp_path):
    ds = _dataset()
    configs = [_config(0), _config(1)]
    in_place = train_runs(configs, ds, runs_root=tmp_path / "a", progress=False, lockstep=2)
    with finishing.background_finishes():
        deferred = train_runs(configs, ds, runs_root=tmp_path / "b", progress=False,
                              lockstep=2)
    for a, b in zip(in_place, deferred, strict=True):
        assert _files(a.directory) == _files(b.directory)


@pytest.mark.parametrize("kwargs, message", [
    ({"lockstep": 0}, "lockstep must be an integer >= 1"),
    ({"lockstep": True}, "lockstep must be an integer >= 1"),
    ({"on_epoch_end": [None]}, "2 runs but 1 on_epoch_end hooks"),
])
def test_train_runs_rejects_bad_arguments_before_any_directory(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        train_runs([_config(0), _config(1)], _dataset(), runs_root=tmp_path / "r",
                   progress=False, **kwargs)
    assert not (tmp_path / "r").exists()


def test_train_runs_rejects_the_same_run_twice(tmp_path):
    with pytest.raises(UserError, match="the same run twice"):
        train_runs([_config(0), _config(0)], _dataset(), runs_root=tmp_path, progress=False,
                   lockstep=2)


def test_fit_lockstep_rejects_no_members_and_the_engine_one_member():
    ds = _dataset()
    engine = _engine(ds)
    with pytest.raises(UserError, match="no members"):
        fit_lockstep(engine, [], ds, epochs=1, batch_size=16)
    with pytest.raises(ValueError, match=">= 2 members"):
        engine.lockstep_train_step(1)
