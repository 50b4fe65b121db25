"""Many train steps per program call (``Engine.steps_on_device``, what ``fit`` runs on an
in-memory dataset): a run's numbers do not depend on how its epochs are cut into calls or on
running beside other runs (bit-identical), and they are the numbers of one step per call (the
same batches, keys and updates; to float32 rounding, since XLA may compile a loop's ops
differently), on one device and on several."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_dataset

from bench.epoch_calls import StepPerCall
from signticket import data as data_lib
from signticket import fit as fit_lib
from signticket import optim
from signticket.sharding import make_mesh
from signticket.train import Engine

sys.path.insert(0, str(Path(__file__).parent))
from _engine_run import TinyNet

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


def _setup():
    ds = synthetic_dataset(80, 16, flip=True)  # 5 steps an epoch; flips draw per-step keys
    engine = Engine(TinyNet(), optim.masked_updates(optim.sgd(0.05, 0.9, 5e-4)), ds.preprocess,
                    make_mesh())
    return ds, engine, data_lib.DeviceSource(ds)


def _state(engine, ds, seed):
    return engine.init_state(jax.random.PRNGKey(seed), ds.train_images)


def _zeros():
    return {"loss": jnp.zeros(()), "accuracy": jnp.zeros(())}


def _one_step_per_call(engine, source, state, epochs, data_seed):
    """The host-driven loop: a gather, a step and the sums dispatched per step."""
    sums = []
    for epoch in range(1, epochs + 1):
        total = _zeros()
        for batch in source.train_epoch(epoch, BATCH, data_seed, engine.mesh):
            state, m = engine.train_step(state, batch)
            total = jax.tree.map(jnp.add, total, m)
        sums.append(total)
    return state, sums


def _on_device(engine, source, states, epochs, data_seeds, slots, cuts):
    """``steps_on_device`` over each epoch, the epoch cut at ``cuts`` into calls."""
    fn = engine.steps_on_device(slots)
    sums = []
    for epoch in range(1, epochs + 1):
        epochs_on_device = [source.device_epoch(epoch, BATCH, d, engine.mesh)
                            for d in data_seeds]
        split, orders = epochs_on_device[0].data, [e.order for e in epochs_on_device]
        bounds = [0, *cuts, epochs_on_device[0].steps]
        totals = [_zeros() for _ in slots]
        for lo, hi in itertools.pairwise(bounds):
            states, totals = fn(states, totals, split.images, split.labels, orders,
                                np.int32(lo), np.int32(hi))
        sums.append(totals)
    return states, sums


def _assert_close(tree, ref):
    chex.assert_trees_all_close(tree, ref, rtol=1e-5, atol=1e-6)


def test_one_run_is_the_same_whatever_the_calls_and_agrees_with_one_step_per_call():
    ds, engine, source = _setup()
    ref_state, ref_sums = _one_step_per_call(engine, source, _state(engine, ds, 0), 2, 7)
    runs = {cuts: _on_device(engine, source, [_state(engine, ds, 0)], 2, [7], (0,), cuts)
            for cuts in [(), (1,), (1, 2, 3, 4)]}  # one call, 1 + 4 steps, a step per call
    [state], sums = runs[()]
    for [other], other_sums in runs.values():
        chex.assert_trees_all_equal(other, state)  # bit-identical, not close
        chex.assert_trees_all_equal(other_sums, sums)
    assert int(state.step) == 10
    _assert_close(state, ref_state)
    for [total], ref in zip(sums, ref_sums, strict=True):
        _assert_close(total, ref)


def test_runs_side_by_side_equal_each_run_alone():
    """Members 0 and 1 share data order 5, member 2 has order 9 (slots (0, 0, 1))."""
    ds, engine, source = _setup()
    members = ((0, 5), (1, 5), (2, 9))
    alone = [_on_device(engine, source, [_state(engine, ds, s)], 2, [d], (0,), (2,))
             for s, d in members]
    states, sums = _on_device(engine, source, [_state(engine, ds, s) for s, _ in members], 2,
                              [5, 9], (0, 0, 1), (3,))
    for m, ([ref_state], ref_sums) in enumerate(alone):
        chex.assert_trees_all_equal(states[m], ref_state)
        for epoch_sums, [ref] in zip(sums, ref_sums, strict=True):
            chex.assert_trees_all_equal(epoch_sums[m], ref)
    seed, data_seed = members[2]
    ref_state, _ = _one_step_per_call(engine, source, _state(engine, ds, seed), 2, data_seed)
    _assert_close(states[2], ref_state)  # member 2 really trained on order 9
    # the members differ (three copies of one run would pass the above too)
    assert not np.array_equal(states[0].params["head"]["kernel"],
                              states[1].params["head"]["kernel"])


def test_fit_on_device_runs_many_steps_per_call_and_agrees_with_host_batches(monkeypatch):
    ds, engine, source = _setup()
    assert isinstance(source, data_lib.DeviceEpochs)
    assert not isinstance(StepPerCall(source), data_lib.DeviceEpochs)
    calls, real = [], Engine.steps_on_device

    def spy(self, slots):
        fn = real(self, slots)

        def counted(*args):
            calls.append((int(args[-2]), int(args[-1])))
            return fn(*args)

        return counted

    monkeypatch.setattr(Engine, "steps_on_device", spy)

    def run(source):
        return fit_lib.fit(engine, _state(engine, ds, 0), source, epochs=2, batch_size=BATCH,
                           data_seed=3, progress=False)

    whole = run(source)  # STEPS_PER_CALL >= 5: an epoch a call
    assert calls == [(0, 5), (0, 5)]
    monkeypatch.setattr(fit_lib, "STEPS_PER_CALL", 2)
    calls.clear()
    cut = run(source)
    assert calls == [(0, 2), (2, 4), (4, 5)] * 2
    calls.clear()
    host = run(StepPerCall(source))
    assert calls == []
    chex.assert_trees_all_equal(cut[0], whole[0])
    assert cut[1] == whole[1]
    _assert_close(whole[0], host[0])
    assert whole[1].keys() == host[1].keys()


def test_bad_arguments_are_one_message():
    ds, engine, source = _setup()
    with pytest.raises(ValueError, match="slots >= 0"):
        engine.steps_on_device(())
    with pytest.raises(ValueError, match="slots >= 0"):
        engine.steps_on_device((0, -1))
    epoch = source.device_epoch(1, BATCH, 0, engine.mesh)
    assert epoch.steps == 5 and epoch.order.shape == (5, BATCH)
    with pytest.raises(ValueError, match="need 2 epoch orders, got 1"):
        engine.steps_on_device((0, 1))([_state(engine, ds, 0), _state(engine, ds, 1)],
                                       [_zeros(), _zeros()], epoch.data.images,
                                       epoch.data.labels, [epoch.order], np.int32(0),
                                       np.int32(1))
    with pytest.raises(ValueError, match="batch size 0 must be a positive multiple"):
        source.device_epoch(1, 0, 0, engine.mesh)
    with pytest.raises(ValueError, match="larger than the 80 training examples"):
        source.device_epoch(1, 96, 0, engine.mesh)


_SHARDED = """
import sys, jax, numpy as np
sys.path.insert(0, {tests!r})
import test_steps_on_device as t
ds, engine, source = t._setup()
assert len(jax.devices()) == 4
ref, ref_sums = t._one_step_per_call(engine, source, t._state(engine, ds, 0), 2, 7)
[one], _ = t._on_device(engine, source, [t._state(engine, ds, 0)], 2, [7], (0,), ())
[cut], sums = t._on_device(engine, source, [t._state(engine, ds, 0)], 2, [7], (0,), (2,))
leaves = lambda a: [np.asarray(x) for x in jax.tree.leaves(a)]
same = all(np.array_equal(a, b) for a, b in zip(leaves(one), leaves(cut)))
close = all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(leaves(cut), leaves(ref)))
close_sums = all(np.allclose(s[0][k], r[k], rtol=1e-5) for s, r in zip(sums, ref_sums) for k in r)
print("OK" if same and close and close_sums else f"DIFFERENT {{same}} {{close}} {{close_sums}}")
"""


def test_sharded_over_4_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _SHARDED.format(tests=str(ROOT / "tests"))],
                         env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "OK"
