"""The one timing helper every benchmark uses.

What is measured: a zero-argument callable (a jitted step closing over its state, a torch step,
a whole ``barrier_curve`` call, ...). Its *first* call is timed on its own: for JAX code it
includes tracing and XLA compilation. Then ``warmup`` untimed calls, then ``repeats`` timed
samples of ``number`` back-to-back calls each (so asynchronous dispatch can overlap consecutive
steps, as in a training loop); every sample ends with ``jax.block_until_ready`` on the last
result. The steady-state figure is the median over the samples, per call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
from jax import monitoring


def block(x: Any) -> Any:
    """Wait until every JAX array in ``x`` is computed (other leaves, e.g. torch tensors, pass:
    eager torch on CPU is synchronous)."""
    return jax.block_until_ready(x)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of one benchmarked call.

    Attributes:
        first_s: the first call alone (for JAX: tracing + compilation + one run).
        median_s: steady state, seconds per call, median over the samples.
        samples_s: every sample, seconds per call.
        number: calls per sample.
    """

    first_s: float
    median_s: float
    samples_s: tuple[float, ...]
    number: int

    @classmethod
    def from_samples(cls, first_s: float, samples_s: list[float] | tuple[float, ...],
                     number: int) -> Timing:
        """The timing of a first call and steady-state samples (seconds per call each)."""
        return cls(first_s, statistics.median(samples_s), tuple(samples_s), number)

    @property
    def compile_s(self) -> float:
        """First call minus one steady-state call: the one-off cost (compilation, tracing)."""
        return max(0.0, self.first_s - self.median_s)

    def rate(self, items_per_call: float) -> float:
        """Steady-state items per second (e.g. images per second of a train step)."""
        return items_per_call / self.median_s

    def to_json(self) -> dict[str, Any]:
        return {
            "first_call_s": round(self.first_s, 4),
            "compile_s": round(self.compile_s, 4),
            "median_s": round(self.median_s, 6),
            "samples_s": [round(s, 6) for s in self.samples_s],
            "calls_per_sample": self.number,
        }


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``, the result blocked on before the clock stops."""
    t0 = time.perf_counter()
    out = block(fn(*args, **kwargs))
    return out, time.perf_counter() - t0


def time_calls(
    call: Callable[[], Any], *, repeats: int = 5, number: int = 1, warmup: int = 0
) -> Timing:
    """Time ``call()``: the first call alone, then ``warmup`` untimed calls, then ``repeats``
    samples of ``number`` consecutive calls (blocking on the last result of each sample)."""
    if repeats < 1 or number < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, number >= 1, warmup >= 0; got {repeats}, "
                         f"{number}, {warmup}")
    _, first = timed(call)
    for _ in range(warmup):
        block(call())
    samples = [sample(call, number) for _ in range(repeats)]
    return Timing.from_samples(first, samples, number)


def sample(call: Callable[[], Any], number: int, warm_s: float = 0.0) -> float:
    """Seconds per call of ``number`` back-to-back calls, blocking on the last result; first,
    with ``warm_s > 0``, untimed calls (at least one) until ``warm_s`` seconds have passed.

    Why warm: a JAX step that ran after the process sat idle was slower for its first ~0.1 s
    (docs/performance.md, stop 35), which a training loop running steps back to back never
    sees."""
    if warm_s > 0:
        until = time.perf_counter() + warm_s
        out = call()
        while time.perf_counter() < until:
            out = call()
        block(out)
    t0 = time.perf_counter()
    out = None
    for _ in range(number):
        out = call()
    block(out)
    return (time.perf_counter() - t0) / number


def time_alternating(
    calls: Mapping[str, Callable[[], Any]], *, repeats: int = 5, number: int = 1
) -> dict[str, Timing]:
    """:func:`time_calls` of several variants, their samples taken in turn (:func:`alternate`):
    a slow spell of a noisy machine then lands on every variant alike instead of on whichever
    ran during it, and sample ``i`` of each variant comes from the same round
    (:func:`paired_speedup`)."""
    if not calls:
        raise ValueError("time_alternating: no calls to time")
    if repeats < 1 or number < 1:
        raise ValueError(f"need repeats >= 1, number >= 1; got {repeats}, {number}")
    first = {name: timed(call)[1] for name, call in calls.items()}
    samples = alternate({name: functools.partial(sample, call, number)
                         for name, call in calls.items()}, repeats)
    return {name: Timing.from_samples(first[name], samples[name], number) for name in calls}


def alternate(samplers: Mapping[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """``repeats`` rounds, each taking one sample (a ``sampler()`` call returning seconds) of
    every variant, the order rotating from round to round: ``{name: [seconds per round]}``."""
    names = list(samplers)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(samplers[name]())
    return samples


def paired_speedup(base: Timing, other: Timing) -> float:
    """Median over rounds of ``base``'s seconds over ``other``'s in the same round (> 1:
    ``other`` is faster), for timings from one :func:`time_alternating` call."""
    if len(base.samples_s) != len(other.samples_s):
        raise ValueError("paired_speedup: timings with different numbers of samples "
                         f"({len(base.samples_s)} and {len(other.samples_s)}): not paired")
    return statistics.median(b / o for b, o in zip(base.samples_s, other.samples_s,
                                                    strict=True))


def tree_nbytes(tree: Any) -> int:
    """Sum of ``nbytes`` over the array leaves of ``tree`` (``None`` leaves count 0)."""
    return int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)))


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@contextlib.contextmanager
def compile_seconds() -> Iterator[dict[str, float]]:
    """``with compile_seconds() as c: ...`` -> ``c["seconds"]``: the seconds JAX reported spending
    on tracing, lowering and XLA compilation inside the block (all threads), ``c["count"]``
    the number of backend compilations."""
    acc = {"seconds": 0.0, "count": 0}

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event in _COMPILE_EVENTS:
            acc["seconds"] += duration
            acc["count"] += event == _COMPILE_EVENTS[-1]

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield acc
    finally:
        monitoring.unregister_event_duration_listener(listener)
