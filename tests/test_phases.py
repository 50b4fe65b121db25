"""signticket.phases: exclusive phase times, compile time, and the pipeline's phases."""

import time

import jax
import jax.numpy as jnp
import pytest
from conftest import synthetic_dataset

from signticket import optim
from signticket.checkpoint import Checkpointer
from signticket.fit import fit
from signticket.phases import phase, record_phases
from signticket.sharding import make_mesh
from signticket.train import Engine


def test_inner_phases_are_not_counted_twice():
    with record_phases() as seconds:
        with phase("outer"):
            time.sleep(0.05)
            with phase("inner"):
                time.sleep(0.1)
        time.sleep(0.02)  # in no phase
    assert seconds["inner"] == pytest.approx(0.1, abs=0.04)
    assert seconds["outer"] == pytest.approx(0.05, abs=0.04)
    assert seconds.total == pytest.approx(0.17, abs=0.06)
    assert seconds.outside() == pytest.approx(0.02, abs=0.04)
    assert "inner" in seconds.summary() and "compiling" in seconds.summary()


def test_phases_outside_a_recording_cost_nothing_and_record_nothing():
    with phase("training"):
        pass
    with record_phases() as seconds:
        pass
    assert dict(seconds) == {}


def test_compile_time_is_counted():
    f = jax.jit(lambda x: jnp.sin(x) * 3 + jnp.cos(x))
    with record_phases() as seconds:
        f(jnp.arange(17.0)).block_until_ready()
    assert seconds.compiling > 0
    with record_phases() as seconds:
        f(jnp.arange(17.0)).block_until_ready()  # cached in this process: nothing compiled
    assert seconds.compiling == 0


def test_fit_marks_training_evaluation_and_checkpointing(tmp_path):
    ds = synthetic_dataset(64, 32)
    engine = Engine(_tiny_net(), optim.masked_updates(optim.sgd(0.05, 0.9)), ds.preprocess,
                    make_mesh())
    state = engine.init_state(jax.random.PRNGKey(0), ds.train_images)
    ckpt = Checkpointer(tmp_path / "run")
    with record_phases() as seconds:
        fit(engine, state, ds, epochs=2, batch_size=16, checkpointer=ckpt, progress=False)
    ckpt.close()
    assert {"training", "evaluation", "checkpointing"} <= set(seconds)
    assert all(s > 0 for s in seconds.values())
    assert sum(seconds.values()) <= seconds.total


def _tiny_net():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _engine_run import TinyNet

    return TinyNet()
