"""Where a whole experiment's wall-clock time goes: seconds by phase (training, evaluation,
checkpointing, pruning, ...) of everything that runs inside :func:`record_phases`.

The pipeline marks its phases with :func:`phase`; outside :func:`record_phases` that costs one
list check. Phases nest and are exclusive: time inside an inner phase counts for the inner one
only (a run's setup does not include the epochs it trains). Each phase's time is measured
around work that ends in a host sync (an epoch's metrics, an evaluation's sums, a checkpoint's
wait), so asynchronous dispatch does not move time between phases.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator

from jax import monitoring

__all__ = ["PhaseTimes", "phase", "record_phases"]

_RECORDERS: list[Counter] = []
_STACK: list[list] = []  # [name, start, seconds spent in inner phases]


class PhaseTimes(Counter):
    """Seconds by phase name, plus what the whole block took (``total``, once it ended) and,
    overlapping the phases, the seconds JAX spent tracing, lowering and compiling programs
    (``compiling``; a persistent-cache hit costs only its read)."""

    total: float = 0.0
    compiling: float = 0.0

    def outside(self) -> float:
        """Seconds of the block in no phase."""
        return max(self.total - sum(self.values()), 0.0)

    def summary(self) -> str:
        """``training 30.1 s (58 %), evaluation ...; compiling 10.2 s of it`` (largest first)."""
        parts = [f"{name} {s:.1f} s ({100 * s / max(self.total, 1e-9):.0f} %)"
                 for name, s in self.most_common()]
        parts.append(f"other {self.outside():.1f} s")
        return ", ".join(parts) + f"; compiling {self.compiling:.1f} s of it"


_COMPILE_EVENTS = "/jax/core/compile/"


@contextlib.contextmanager
def record_phases() -> Iterator[PhaseTimes]:
    """``with record_phases() as seconds:`` -- ``seconds[name]`` sums the exclusive wall time of
    every :func:`phase` ``name`` entered inside the block (filled as phases end)."""
    seconds = PhaseTimes()

    def on_event(event: str, duration: float, **_) -> None:
        if event.startswith(_COMPILE_EVENTS):
            seconds.compiling += duration

    monitoring.register_event_duration_secs_listener(on_event)
    _RECORDERS.append(seconds)
    started = time.perf_counter()
    try:
        yield seconds
    finally:
        seconds.total = time.perf_counter() - started
        _RECORDERS.remove(seconds)
        monitoring.unregister_event_duration_listener(on_event)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's wall time, minus its inner phases', as ``name``."""
    if not _RECORDERS:
        yield
        return
    frame = [name, time.perf_counter(), 0.0]
    _STACK.append(frame)
    try:
        yield
    finally:
        _STACK.pop()
        spent = time.perf_counter() - frame[1]
        for seconds in _RECORDERS:
            seconds[name] += spent - frame[2]
        if _STACK:
            _STACK[-1][2] += spent
