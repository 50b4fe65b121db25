"""signticket.phases: exclusive phase times, compile time, and the pipeline's phases."""

import jax
import jax.numpy as jnp
from conftest import synthetic_dataset

from signticket import optim, phases
from signticket.checkpoint import Checkpointer
from signticket.fit import fit
from signticket.phases import phase, record_phases
from signticket.sharding import make_mesh
from signticket.train import Engine


class FakeClock:
    """``time.perf_counter`` that moves only when told: the test is exact, not timed."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_inner_phases_are_not_counted_twice(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(phases.time, "perf_counter", clock)
    with record_phases() as seconds:
        with phase("outer"):
            clock.sleep(0.5)
            with phase("inner"):
                clock.sleep(1.0)
            with phase("inner"):
                clock.sleep(0.25)
        clock.sleep(0.125)  # in no phase
    assert dict(seconds) == {"outer": 0.5, "inner": 1.25}
    assert seconds.total == 1.875 and seconds.outside() == 0.125
    assert seconds.summary().startswith("inner 1.2 s (67 %), outer 0.5 s (27 %), other 0.1 s")


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
