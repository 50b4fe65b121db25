"""Rows of the suite's table, the table itself, and the machine the figures were taken on."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jax

from bench import isa
from bench.train_step import xla_flag_state


@dataclasses.dataclass
class Row:
    """One line of the table.

    ``signticket`` and ``baseline`` are figures in ``unit``; ``baseline`` may instead be a
    message (e.g. torch missing) or ``None`` (nothing to compare with). ``ratio`` is
    signticket's advantage: ``signticket / baseline`` when ``higher_is_better`` (rates), else
    ``baseline / signticket`` (seconds, bytes), or ``paired_ratio`` where the two sides were
    timed in turn (the median over rounds of each round's ratio, which a slow spell of the
    machine moves less than a ratio of medians). ``goal`` is the ratio to reach, if any.
    """

    key: str
    benchmark: str
    unit: str
    signticket: float | None
    baseline: float | str | None = None
    higher_is_better: bool = True
    goal: float | None = None
    signticket_note: str = ""
    baseline_note: str = ""
    error: str | None = None
    paired_ratio: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if not isinstance(self.baseline, int | float) or not self.signticket or not self.baseline:
            return None
        if self.higher_is_better:
            return self.signticket / self.baseline
        return self.baseline / self.signticket

    @property
    def met(self) -> bool | None:
        if self.goal is None or self.ratio is None:
            return None
        return self.ratio >= self.goal

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        d["met"] = self.met
        return d


def _fig(value: float | str | None, unit: str, note: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    text = f"{value:.4g} {unit}" if abs(value) < 1e5 else f"{value:.3e} {unit}"
    return f"{text} {note}".strip()


def format_table(rows: list[Row]) -> str:
    """The rows as one aligned text table, with a legend."""
    header = ("benchmark", "signticket", "baseline", "ratio", "goal", "met?")
    lines = []
    for r in rows:
        if r.error:
            lines.append((r.benchmark, f"error: {r.error}"[:60], "-", "-", "-", "-"))
            continue
        lines.append((
            r.benchmark,
            _fig(r.signticket, r.unit, r.signticket_note),
            _fig(r.baseline, r.unit, r.baseline_note),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            "-" if r.goal is None else f">= {r.goal:g}x",
            {None: "-", True: "yes", False: "NO"}[r.met],
        ))
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]

    def fmt(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "-" * len(fmt(header))
    legend = ("ratio = signticket's advantage (signticket rate / baseline rate, or baseline "
              "time / signticket time); met? = ratio >= goal")
    return "\n".join([fmt(header), rule, *(fmt(x) for x in lines), rule, legend])


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    """The CPU's model name and its widest x86 vector extension, from ``/proc/cpuinfo``."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), platform.processor() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    vector = next((f for f in ("avx512f", "avx2", "avx") if f in flags), None)
    return f"{name} ({vector})" if vector else name


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, load, library versions, JAX backend and the XLA flags in effect."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "node": platform.node(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "optax": _version("optax"),
        "torch": _version("torch"),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax_compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        **xla_flag_state(),
        "isa_caps": isa.state(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def uncached_rows(names: Iterable[str], measure: Callable[[str], dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """``measure(name)`` for each name with JAX's compilation cache off, so every compile
    timed is a real one; prints each row as JSON when it is ready."""
    rows = []
    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        for name in names:
            rows.append(measure(name))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    return rows


def write_result(result: dict[str, Any], out: str | os.PathLike | None) -> dict[str, Any]:
    """Write ``result`` as JSON to ``out`` (when given; its folder is made if missing);
    returns it."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str))
    return result
