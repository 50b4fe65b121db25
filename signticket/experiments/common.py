"""Helpers every experiment module repeats: the seed loop (with per-seed result files), cached
barrier curves, and saving a matplotlib figure.

An experiment is then a thin composition: ``run`` = :func:`run_seeds` over a per-seed pipeline
that calls :func:`cached_barrier`; ``report`` = tables from
:mod:`signticket.experiments.tables` and figures saved with :func:`save_figure`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from signticket.checkpoint import config_hash, write_json_atomic
from signticket.errors import require

log = logging.getLogger(__name__)

T = TypeVar("T")


def seed_result_path(directory: Path, seed: int, tag: str) -> Path:
    """Where :func:`run_seeds` keeps one seed's result: ``<dir>/seed<seed>-<tag>.json``."""
    return Path(directory) / f"seed{seed}-{tag}.json"


def run_seeds(seeds: Iterable[int], run_one: Callable[[int], T], *,
              cache_dir: Path | None = None, tag: str = "",
              describe: Callable[[int, T], str] | None = None,
              announce: Callable[[str], None] = log.info) -> list[T]:
    """``[run_one(seed) for seed in seeds]``, in order.

    With ``cache_dir``, each seed's (JSON-able) result is written to
    :func:`seed_result_path` as soon as it is done and read back instead of re-running it, so a
    killed experiment loses at most the seed in progress (its runs resume anyway) and a second
    experiment process over other seeds can share ``cache_dir``. ``tag`` (e.g. the config's
    hash) keeps results of different configs apart. ``describe(seed, result)`` goes to
    ``announce`` (default: the log at INFO) after each seed; see :func:`progress_lines`."""
    results = []
    for seed in seeds:
        path = None if cache_dir is None else seed_result_path(cache_dir, seed, tag)
        if path is not None and path.exists():
            result = json.loads(path.read_text())
        else:
            result = run_one(seed)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, result)
        if describe is not None:
            announce(describe(seed, result))
        results.append(result)
    return results


def seed_results(directory: Path, tag: str) -> list[Any]:
    """Every seed's result kept in ``directory`` under ``tag`` (:func:`seed_result_path`), in
    numeric seed order (seed 2 before seed 10): what every process that shared ``directory``
    as :func:`run_seeds`' ``cache_dir`` has finished."""
    pattern = re.compile(rf"seed(\d+)-{re.escape(tag)}\.json")
    found = {int(m.group(1)): path for path in Path(directory).glob(f"seed*-{tag}.json")
             if (m := pattern.fullmatch(path.name))}
    return [json.loads(found[seed].read_text()) for seed in sorted(found)]


def progress_lines(no_progress: bool) -> Callable[[str], None]:
    """Where an experiment's one line per finished run goes: stdout (flushed) when progress
    bars are off, the log at INFO otherwise (the bars own the terminal then)."""
    return functools.partial(print, flush=True) if no_progress else log.info


def curve_record(curve: Any) -> dict[str, Any]:
    """A :class:`signticket.lmc.BarrierCurve` as the JSON every experiment stores: the curve
    (alphas, error, loss) and its error and loss barriers."""
    from signticket import lmc

    return {"alphas": np.asarray(curve.alphas).tolist(),
            "error": np.asarray(curve.error).tolist(), "loss": np.asarray(curve.loss).tolist(),
            "error_barrier": float(lmc.error_barrier(curve)),
            "loss_barrier": float(lmc.loss_barrier(curve))}


#: The names the barrier caches have always given :func:`signticket.lmc.barrier_curve`'s
#: options in their key (the AWS experiment's); any other option keeps its own name.
_OPTION_CACHE_NAMES = {"bn_mode": "bn_mode", "bn_batch_size": "bn_bs"}


def barrier_cache_path(runs_root: str | Path, prefix: str, ids: Sequence[str],
                       experiment: Mapping[str, Any],
                       options: Mapping[str, Any] | None = None) -> Path:
    """The cache file of a barrier between the runs named by ``ids``, for the barrier settings
    of ``experiment`` (``barrier_points``, ``bn_batches``, ``barrier_batch_size``) and the
    curve's ``options``. The same name the experiments have always used, so existing caches
    stay valid."""
    settings = {"ids": list(ids), "points": experiment["barrier_points"],
                "bn": experiment["bn_batches"], "bs": experiment["barrier_batch_size"]}
    settings.update({_OPTION_CACHE_NAMES.get(k, k): v for k, v in (options or {}).items()})
    return Path(runs_root) / "barriers" / f"{prefix}-{config_hash(settings)}.json"


def cached_barrier(prefix: str, model, dataset, a, b, experiment: Mapping[str, Any],
                   runs_root: str | Path, ids: Sequence[str], mask=None, *,
                   options: Mapping[str, Any] | None = None,
                   record: Callable[[Any], dict[str, Any]] = curve_record,
                   curve_fn: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The barrier curve between variables ``a`` and ``b`` as ``record(curve)`` (default
    :func:`curve_record`), computed once per (``ids``, settings, ``options``) and read back
    from ``<runs_root>/barriers`` afterwards.

    ``ids`` must name ``a`` and ``b`` uniquely (their run directories): the cache key holds
    nothing else about them. ``mask`` applies to both ends. ``options`` are further keyword
    arguments of :func:`signticket.lmc.barrier_curve` (e.g. ``bn_mode``), all part of the
    cache key. ``record`` must give the same fields for the same prefix, as the cache keeps
    whichever came first. ``curve_fn`` replaces :func:`signticket.lmc.barrier_curve` (tests)."""
    path = barrier_cache_path(runs_root, prefix, ids, experiment, options)
    if path.exists():
        return json.loads(path.read_text())
    if curve_fn is None:
        from signticket.lmc import barrier_curve as curve_fn
    curve = curve_fn(model, dataset.preprocess, a, b, dataset,
                     alphas=np.linspace(0, 1, experiment["barrier_points"]),
                     bn_batches=experiment["bn_batches"],
                     batch_size=experiment["barrier_batch_size"], mask_a=mask, mask_b=mask,
                     **(options or {}))
    out = record(curve)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, out)
    return out


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    matplotlib = require("matplotlib", "plots", "figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Lay out, save and close ``fig`` (an open figure per plot leaks memory over a suite)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
