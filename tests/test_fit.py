"""The epoch loop: resume after a kill equals an uninterrupted run; NaN stops and keeps the last
good checkpoint; finished runs are reused; config-derived run directories."""

import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import synthetic_dataset

from signticket import optim
from signticket.checkpoint import Checkpointer, CheckpointError, config_hash, run_dir
from signticket.fit import fit
from signticket.metrics import MetricsWriter
from signticket.sharding import make_mesh
from signticket.train import Engine, NonFiniteLossError

sys.path.insert(0, str(Path(__file__).parent))
from _engine_run import TinyNet


def _dataset(n=96):
    return synthetic_dataset(n, 40, flip=True)


def _engine(tx=None):
    return Engine(
        TinyNet(),
        tx or optim.masked_updates(optim.sgd(0.05, 0.9, 5e-4)),
        _dataset().preprocess,
        make_mesh(),
    )


class Killed(Exception):
    pass


def _fit(directory, epochs=4, kill_at=None, tx=None, eval_every=1):
    ds, engine = _dataset(), _engine(tx)
    state = engine.init_state(jax.random.PRNGKey(0), ds.train_images)

    def hook(epoch, s):
        if epoch == kill_at:
            raise Killed
        return s

    ckpt = Checkpointer(directory)
    try:
        return fit(
            engine,
            state,
            ds,
            epochs=epochs,
            batch_size=16,
            data_seed=3,
            checkpointer=ckpt,
            metrics=MetricsWriter(directory / "metrics.jsonl"),
            on_epoch_end=hook,
            eval_every=eval_every,
            progress=False,
        )
    finally:
        ckpt.close()


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    full_state, full = _fit(tmp_path / "full")
    with pytest.raises(Killed):
        _fit(tmp_path / "killed", kill_at=3)
    assert Checkpointer(tmp_path / "killed").latest_step() == 2
    resumed_state, resumed = _fit(tmp_path / "killed")
    chex.assert_trees_all_close(full_state.params, resumed_state.params, atol=1e-6)
    chex.assert_trees_all_close(full_state.batch_stats, resumed_state.batch_stats, atol=1e-6)
    assert full == pytest.approx(resumed, abs=1e-6)
    epochs = [r["epoch"] for r in MetricsWriter(tmp_path / "killed" / "metrics.jsonl").read()]
    assert epochs == [1, 2, 3, 4]


def test_sparse_evaluation_still_tests_the_last_epoch_and_changes_no_weight(tmp_path):
    """``eval_every`` beyond the run's length (the quickstart's AWS runs) tests only the last
    epoch, with the same final state and test figures as testing every epoch."""
    every_state, every = _fit(tmp_path / "every")
    once_state, once = _fit(tmp_path / "once", eval_every=10)
    chex.assert_trees_all_equal(every_state.params, once_state.params)
    assert once == every
    records = MetricsWriter(tmp_path / "once" / "metrics.jsonl").read()
    assert [r["epoch"] for r in records if "test_accuracy" in r] == [4]


def test_finished_run_is_reused_not_retrained(tmp_path):
    state, summary = _fit(tmp_path / "r")
    ckpt = Checkpointer(tmp_path / "r")
    assert ckpt.done()["epoch"] == 4
    ckpt.close()
    again_state, again = _fit(tmp_path / "r", kill_at=1)  # would raise if it trained
    assert again == summary
    chex.assert_trees_all_equal(state.params, again_state.params)


def _nan_after(k):
    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None):
        bad = jnp.where(count >= k, jnp.nan, 1.0)
        return jax.tree.map(lambda u: u * bad, updates), count + 1

    return optax.GradientTransformation(init, update)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    tx = optim.masked_updates(optax.chain(optim.sgd(0.05, 0.9), _nan_after(6 * 2 + 3)))
    with pytest.raises(NonFiniteLossError, match="epoch 3"):
        _fit(tmp_path / "nan", tx=tx)
    ckpt = Checkpointer(tmp_path / "nan")
    assert ckpt.latest_step() == 2 and ckpt.done() is None
    _, restored = ckpt.restore(
        _engine(tx).init_state(jax.random.PRNGKey(0), _dataset().train_images)
    )
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(restored.params))
    ckpt.close()


def test_every_checkpoint_damaged_is_moved_aside_and_run_restarts(tmp_path):
    fresh_state, fresh = _fit(tmp_path / "fresh", epochs=2)
    _fit(tmp_path / "c", epochs=1)
    for f in (tmp_path / "c" / "checkpoints").rglob("*"):
        if f.is_file() and "_CHECKPOINT_METADATA" not in f.name:
            f.write_bytes(b"garbage")
    state, summary = _fit(tmp_path / "c", epochs=2)
    assert [p.name.split("-")[1] for p in (tmp_path / "c" / "checkpoints").glob("corrupt-*")] \
        == ["1"]
    chex.assert_trees_all_close(state.params, fresh_state.params, atol=1e-6)
    assert summary == pytest.approx(fresh, abs=1e-6)
    epochs = [r["epoch"] for r in MetricsWriter(tmp_path / "c" / "metrics.jsonl").read()]
    assert epochs == [1, 2]


def test_checkpoint_of_another_model_is_not_called_corrupt(tmp_path):
    _fit(tmp_path / "m", epochs=1)
    ckpt = Checkpointer(tmp_path / "m")
    other = {"w": jnp.zeros((3, 3)), "b": jnp.zeros(2)}  # a different structure: intact, foreign
    with pytest.raises(CheckpointError, match="intact but does not fit"):
        ckpt.restore(other)
    ckpt.close()
    assert not list((tmp_path / "m" / "checkpoints").glob("corrupt-*"))
    assert Checkpointer(tmp_path / "m").latest_step() == 1


def test_run_dir_from_config(tmp_path):
    a = run_dir(tmp_path, {"lr": 0.1, "model": {"name": "mlp"}}, "train")
    b = run_dir(tmp_path, {"model": {"name": "mlp"}, "lr": 0.1}, "train")
    c = run_dir(tmp_path, {"lr": 0.2, "model": {"name": "mlp"}}, "train")
    assert a == b != c
    assert a.name == f"train-{config_hash({'lr': 0.1, 'model': {'name': 'mlp'}})}"
    (a / "config.json").write_text('{"lr": 0.3}')
    with pytest.raises(CheckpointError, match="different config"):
        run_dir(tmp_path, {"lr": 0.1, "model": {"name": "mlp"}}, "train")
