"""Ctrl-C is never lost: Python swallows a KeyboardInterrupt raised inside a garbage-collection
callback (JAX registers one) and trains on; ``fit`` raises it again at its next step."""

import gc
import signal
import sys
from pathlib import Path

import jax
import pytest
from conftest import synthetic_dataset

from signticket import interrupts, optim
from signticket.fit import fit
from signticket.sharding import make_mesh
from signticket.train import Engine

sys.path.insert(0, str(Path(__file__).parent))
from _engine_run import TinyNet

# Python reports the swallowed KeyboardInterrupt ("Exception ignored in: gc callback").
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def terminal_ctrl_c():
    """SIGINT as in an interactive terminal: a test run started in the background (``cmd &``,
    nohup) inherits it ignored, and then a Ctrl-C rightly does nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _ctrl_c_in_next_gc_callback() -> list:
    """Press Ctrl-C from inside the next garbage collection's callback, once; returns the
    list the callback appends to when it has."""
    pressed = []

    def callback(phase, info):
        if phase == "start" and not pressed:
            pressed.append(True)
            signal.raise_signal(signal.SIGINT)  # KeyboardInterrupt, raised in the callback

    gc.callbacks.append(callback)
    return pressed


def test_swallowed_ctrl_c_is_raised_again_once():
    with interrupts.ctrl_c_reraised():
        pressed = _ctrl_c_in_next_gc_callback()
        try:
            gc.collect()  # returns: Python printed the KeyboardInterrupt and went on
        finally:
            gc.callbacks.pop()
        assert pressed
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        interrupts.check()  # raised once, not again


def test_handler_is_restored_and_nothing_is_pending_outside():
    before = signal.getsignal(signal.SIGINT)
    with interrupts.ctrl_c_reraised():
        assert signal.getsignal(signal.SIGINT) is not before
        with interrupts.ctrl_c_reraised():  # nested: the outer block's handler stays
            inner = signal.getsignal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is inner
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # a Ctrl-C that is not swallowed propagates
    assert signal.getsignal(signal.SIGINT) is before
    interrupts.check()  # the propagated one is not raised a second time


def test_fit_stops_at_a_ctrl_c_a_gc_callback_swallowed():
    ds = synthetic_dataset(96, 40, flip=True)
    engine = Engine(TinyNet(), optim.masked_updates(optim.sgd(0.05, 0.9, 5e-4)),
                    ds.preprocess, make_mesh())
    state = engine.init_state(jax.random.PRNGKey(0), ds.train_images)
    epochs_ended = []

    def hook(epoch, s):
        epochs_ended.append(epoch)
        if epoch == 1:
            pressed = _ctrl_c_in_next_gc_callback()
            try:
                gc.collect()
            finally:
                gc.callbacks.pop()
            assert pressed
        return s

    with pytest.raises(KeyboardInterrupt):
        fit(engine, state, ds, epochs=3, batch_size=16, on_epoch_end=hook, progress=False)
    assert epochs_ended == [1]
