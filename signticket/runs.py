"""Building blocks shared by every run: config -> dataset, model, optimizer, engine, run dir."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from signticket import config as config_lib
from signticket import cpu_tuning, finishing, models
from signticket import data as data_lib
from signticket.checkpoint import (
    Checkpointer,
    canonical_json,
    check_runs_root,
    is_primary,
    lock_run_dir,
)
from signticket.errors import UserError
from signticket.fit import EpochHook, Member, fit_lockstep
from signticket.metrics import make_writer, writer_names
from signticket.optim import make_optimizer, masked
from signticket.phases import phase
from signticket.run_desc import RunDesc, as_desc, check_inputs
from signticket.schedules import make_schedule
from signticket.sharding import make_mesh
from signticket.train import Engine, PreForward, TrainState
from signticket.tree import PyTree

DEFAULT_RUNS_ROOT = os.environ.get("SIGNTICKET_RUNS", "runs")


def check_names(config: ConfigDict) -> None:
    """Fail fast, before loading data, on an unknown model or dataset name."""
    if config.model.name not in models.names():
        raise UserError(
            f"unknown model {config.model.name!r}; available: {', '.join(models.names())}"
        )
    known = data_lib.names() + data_lib.streaming_names()
    if config.data.name not in known:
        raise UserError(f"unknown dataset {config.data.name!r}; available: {', '.join(known)}")


def load_dataset(cfg: ConfigDict,
                 data_dir: str | None = None) -> data_lib.Dataset | data_lib.StreamingDataset:
    """The dataset named by ``cfg.name`` with its subsets (0 = the whole split): in memory
    when it fits, else streamed (ImageNet; ``cfg.image_size`` sets its side, default 224).
    Either is what :func:`train_run` and :func:`signticket.fit.fit` take."""
    try:
        if cfg.name in data_lib.streaming_names():
            return data_lib.load_stream(
                cfg.name,
                data_dir=data_dir,
                train_subset=cfg.get("train_subset") or None,
                test_subset=cfg.get("test_subset") or None,
                image_size=cfg.get("image_size") or None,
            )
        return data_lib.load(
            cfg.name,
            data_dir=data_dir,
            train_subset=cfg.get("train_subset") or None,
            test_subset=cfg.get("test_subset") or None,
            seed=cfg.get("subset_seed", 0),
        )
    except ValueError as e:
        # The data layer's two mistakes of the config (it raises plain ValueErrors): a subset
        # larger than its split, a streamed dataset asked for in memory. Anything else is not
        # the user's and keeps its traceback.
        text = str(e)
        if isinstance(e, UserError) or not (
                text.startswith("subset of") or "too large to hold in memory" in text):
            raise
        raise UserError(f"data: {text}") from e


def build_model(cfg: ConfigDict, num_classes: int):
    """The registry model ``cfg.name`` with ``cfg.kwargs`` (a :class:`UserError` for an unknown
    name or keyword)."""
    kwargs = dict(cfg.get("kwargs", ConfigDict()).to_dict())
    if cfg.name not in models.names():
        raise UserError(f"unknown model {cfg.name!r}; available: {', '.join(models.names())}")
    try:
        return models.get(cfg.name, num_classes=num_classes, **kwargs)
    except TypeError as e:
        if "unknown keyword" not in str(e):
            raise  # a bug, not a config mistake
        raise UserError(f"model.kwargs: {e}") from e


def check_run_config(config: ConfigDict, runs_root: str | os.PathLike | None = None) -> None:
    """Everything about a run config that can be checked without data: values
    (:func:`signticket.config.validate`), model, optimizer and schedule names, and the runs
    root. Raises :class:`UserError` naming the first problem. (The dataset name is checked by
    :func:`check_names` where data is loaded by name; a run is handed its dataset.)"""
    from signticket.optim import OPTIMIZERS
    from signticket.schedules import SCHEDULES

    config_lib.validate(config)
    model = config.get("model")
    if model is not None and model.get("name") not in models.names():
        raise UserError(f"unknown model {model.get('name')!r}; available: "
                        f"{', '.join(models.names())}")
    opt = config.get("optimizer")
    if opt is not None:
        if "name" in opt and opt.name not in OPTIMIZERS:
            raise UserError(f"optimizer.name {opt.get('name')!r} is unknown; available: "
                            f"{', '.join(OPTIMIZERS)}")
        if "schedule" in opt and opt.schedule not in SCHEDULES:
            raise UserError(f"optimizer.schedule {opt.get('schedule')!r} is unknown; available: "
                            f"{', '.join(SCHEDULES)}")
    writer_names(_logging_config(config))  # unknown metric writers: before any directory
    if runs_root is not None:
        check_runs_root(runs_root)


#: What every train run takes from its pipeline's config; a stage sets the rest (seed, data
#: order, optimizer, epochs) and adds what names it. "logging" (the metric writers) and
#: "checkpoint_min_interval_s" are copied but name no run: see ``checkpoint.UNHASHED_KEYS``.
TRAIN_KEYS = ("model", "data", "batch_size", "eval_every", "checkpoint_every",
              "checkpoint_min_interval_s", "logging")


def stage_config(config: ConfigDict, stage: str, *, seed: int, data_seed: int,
                 optimizer: ConfigDict, epochs: int, **extra: Any) -> ConfigDict:
    """The config of one train run of a pipeline (every pipeline builds its stages' configs
    here): :data:`TRAIN_KEYS` from ``config``, the stage's seed, data order, optimizer and
    epochs, and ``extra`` keys that tell the stage's runs apart. Inputs the run starts from are
    not keys: they are :class:`~signticket.run_desc.Input` s of its
    :class:`~signticket.run_desc.RunDesc`."""
    c = ConfigDict({k: config[k] for k in TRAIN_KEYS if k in config})
    c.seed, c.data_seed, c.epochs, c.stage = seed, data_seed, epochs, stage
    c.optimizer = ConfigDict(ConfigDict(optimizer).to_dict())
    for k, v in extra.items():
        c[k] = v
    return ConfigDict(c.to_dict())


def _logging_config(config: ConfigDict) -> dict[str, Any]:
    """``config.logging`` as a plain dict (empty when absent). Not part of a run's identity
    (:data:`~signticket.checkpoint.UNHASHED_KEYS`)."""
    section = config.get("logging")
    return section.to_dict() if hasattr(section, "to_dict") else dict(section or {})


def build_schedule(
    cfg: ConfigDict,
    epochs: int,
    steps_per_epoch: int,
    *,
    schedule: str | None = None,
    learning_rate: float | None = None,
) -> optax.Schedule:
    """The learning-rate schedule of an optimizer config (what :func:`build_optimizer` uses)."""
    lr = cfg.learning_rate if learning_rate is None else learning_rate
    total = max(1, epochs * steps_per_epoch)
    return make_schedule(
        schedule or cfg.schedule,
        lr,
        total,
        milestones=tuple(cfg.get("milestones", (0.5, 0.75))),
        gamma=cfg.get("gamma", 0.1),
        warmup_steps=min(total - 1, cfg.get("warmup_epochs", 0) * steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        eta_min_ratio=cfg.get("eta_min_ratio", 0.0),
    )


def build_optimizer(
    cfg: ConfigDict,
    epochs: int,
    steps_per_epoch: int,
    *,
    schedule: str | None = None,
    learning_rate: float | None = None,
) -> optax.GradientTransformation:
    """``masked(optimizer(schedule))`` from an optimizer config (dense until a mask is set)."""
    sched = build_schedule(cfg, epochs, steps_per_epoch, schedule=schedule,
                           learning_rate=learning_rate)
    kwargs: dict[str, Any] = {"weight_decay": cfg.get("weight_decay", 0.0)}
    if cfg.name == "sgd":
        kwargs["momentum"] = cfg.get("momentum", 0.9)
    return masked(make_optimizer(cfg.name, sched, **kwargs))


def initial_variables(config: ConfigDict, dataset: data_lib.Dataset | data_lib.Source
                      ) -> dict[str, PyTree]:
    """The ``{"params", "batch_stats"}`` a run with ``config.seed`` starts from (the same ones
    :func:`train_run` draws when given no ``init_params``)."""
    model = build_model(config.model, dataset.num_classes)
    engine = Engine(model, optax.identity(), dataset.preprocess)
    init_key = jax.random.split(jax.random.PRNGKey(config.seed))[0]
    return engine.init_variables(init_key, data_lib.sample_images(dataset))


def compute_dtype(config: ConfigDict):
    """The engine's compute dtype from ``config.model.compute_dtype`` (absent or ``"float32"``:
    full precision, ``None`` for the engine; ``"bfloat16"``: mixed precision)."""
    name = config.model.get("compute_dtype") or config_lib.DEFAULT_COMPUTE_DTYPE
    return None if name == config_lib.DEFAULT_COMPUTE_DTYPE else jnp.dtype(name)


_ENGINES: dict = {}


def _program_options(model, dataset: data_lib.Dataset | data_lib.Source) -> dict[str, Any]:
    """:func:`signticket.cpu_tuning.program_options` from the model's variable shapes (the
    trace is the one ``init_state`` reuses)."""
    from signticket.models.variables import init_program

    x = dataset.preprocess(jnp.asarray(data_lib.sample_images(dataset)[:1]), None, False)
    shapes = init_program().eval_shape(model, jax.random.PRNGKey(0), x)
    return cpu_tuning.program_options(shapes)


def _cached_engine(config: ConfigDict, dataset: data_lib.Dataset | data_lib.Source, steps: int,
                   pre_forward: PreForward | None, mesh) -> Engine:
    """One engine (so one compiled step) per distinct model/optimizer/schedule: the runs of a
    pipeline (IMP rounds, transfers, seeds) that share them do not recompile."""
    key = (
        canonical_json(config.model), dataset.num_classes, dataset.preprocess,
        canonical_json(config.optimizer), config.epochs, steps, pre_forward,
        tuple(d.id for d in mesh.devices.flat), compute_dtype(config),
    )
    if key not in _ENGINES:
        if len(_ENGINES) > 32:
            _ENGINES.clear()
        model = build_model(config.model, dataset.num_classes)
        tx = build_optimizer(config.optimizer, config.epochs, steps)
        _ENGINES[key] = Engine(model, tx, dataset.preprocess, mesh, pre_forward,
                               compute_dtype=compute_dtype(config),
                               compiler_options=_program_options(model, dataset))
    return _ENGINES[key]


def enable_compilation_cache(path: str | os.PathLike | None = None) -> None:
    """Persist XLA compilations across processes (``SIGNTICKET_JAX_CACHE``, default
    ``~/.cache/signticket/jax``; set it to ``off`` to disable). Resumed runs, experiment re-runs
    and test workers then skip recompiling."""
    path = path or os.environ.get("SIGNTICKET_JAX_CACHE",
                                  os.path.expanduser("~/.cache/signticket/jax"))
    if str(path).lower() == "off":
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every program: most compile in 0.03-1 s, which summed to ~50 s of a quickstart
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@dataclasses.dataclass
class RunResult:
    """What a finished run leaves: its directory, final state and test metrics."""

    directory: Path
    state: TrainState
    summary: dict[str, float]


def train_run(
    desc: RunDesc | ConfigDict,
    dataset: data_lib.Dataset | data_lib.Source,
    *,
    name: str | None = None,
    runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
    mesh=None,
    learning_rate: optax.ScalarOrSchedule | None = None,
) -> RunResult:
    """Train the run ``desc`` describes in its own resumable run directory.

    ``desc`` is a :class:`~signticket.run_desc.RunDesc`: the config plus every input the run
    starts from (initial params and batch statistics, a mask, hook state, an optimizer), each
    an :class:`~signticket.run_desc.Input` naming where it came from, and the pre-forward hook.
    The directory is named by all of that (:meth:`RunDesc.hashname`), and ``inputs.json`` in it
    pins the inputs' values: a directory is never reused for different inputs. A bare config
    is a run with no inputs (a fresh init from its seed). ``name`` overrides ``desc.name``.

    The config is validated (:func:`check_run_config`) before the run directory is made, and
    the directory is locked (:func:`~signticket.checkpoint.lock_run_dir`) for the whole run: a
    second process on the same run fails at once with
    :class:`~signticket.checkpoint.RunLockedError` naming the directory and the holder's pid.

    Metrics go to the writers of ``config.logging`` (:func:`~signticket.metrics.make_writer`).
    The learning rate they record is ``config.optimizer``'s schedule, or with a ``tx`` of the
    caller's, ``learning_rate`` (the schedule that ``tx`` follows; none recorded if omitted).
    """
    [result] = train_runs([as_desc(desc, name)], dataset, runs_root=runs_root,
                          on_epoch_end=[on_epoch_end], progress=progress, mesh=mesh,
                          learning_rate=learning_rate)
    return result


@phase("run setup")  # what fit does inside is counted as its own phases
def train_runs(
    descs: Sequence[RunDesc | ConfigDict],
    dataset: data_lib.Dataset | data_lib.Source,
    *,
    runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT,
    on_epoch_end: Sequence[EpochHook | None] | None = None,
    progress: bool = True,
    mesh=None,
    learning_rate: optax.ScalarOrSchedule | None = None,
    lockstep: int = 1,
) -> list[RunResult]:
    """:func:`train_run` of each of ``descs`` (and its ``on_epoch_end`` hook), up to
    ``lockstep`` of them side by side (:func:`~signticket.fit.fit_lockstep`): one program
    steps them together, which is faster for models too small to fill the cores. Each run
    ends as :func:`train_run` of it alone leaves it: same directory, files and numbers, bit for
    bit. Runs train side by side when they share the engine (model, optimizer config, epochs,
    batch size, pre-forward hook, no ``tx`` of the caller's) and the loop's settings; the rest
    train one after another. Every config is checked before any directory is made."""
    descs = [as_desc(d) for d in descs]
    hooks = list(on_epoch_end) if on_epoch_end is not None else [None] * len(descs)
    if len(hooks) != len(descs):
        raise UserError(f"train_runs: {len(descs)} runs but {len(hooks)} on_epoch_end hooks")
    if not isinstance(lockstep, int) or isinstance(lockstep, bool) or lockstep < 1:
        raise UserError(f"lockstep must be an integer >= 1, got {lockstep!r}")
    for desc in descs:
        _check_run(desc, dataset, runs_root)
    directories = [d.directory(runs_root) for d in descs]
    if len(set(directories)) < len(directories):
        raise UserError("train_runs: the same run twice ("
                        f"{next(str(d) for d in directories if directories.count(d) > 1)})")
    mesh = mesh or make_mesh()
    groups: list[list[int]] = []  # in the order of their first run
    filling: dict[tuple, list[int]] = {}
    for i, desc in enumerate(descs):
        key = _lockstep_key(desc) if lockstep > 1 else (i,)
        group = filling.get(key)
        if group is None or len(group) == lockstep:
            group = filling[key] = []
            groups.append(group)
        group.append(i)
    results: list[RunResult | None] = [None] * len(descs)
    for group in groups:
        for i, result in zip(group, _train_together(
                [descs[i] for i in group], [directories[i] for i in group],
                [hooks[i] for i in group], dataset, progress, mesh, learning_rate), strict=True):
            results[i] = result
    return results


def _check_run(desc: RunDesc, dataset: data_lib.Dataset | data_lib.Source,
               runs_root: str | os.PathLike) -> None:
    """Every check of a run that needs no directory: a bad value fails before any is made."""
    config = desc.config
    check_run_config(config, runs_root)
    build_model(config.model, dataset.num_classes)  # unknown model keywords
    n_train = data_lib.num_train(dataset)
    if config.batch_size > n_train:
        raise UserError(f"batch_size {config.batch_size} is larger than the "
                        f"{n_train} training examples of {dataset.name}")


def _lockstep_key(desc: RunDesc) -> tuple:
    """What runs trained side by side must share (one engine, one loop)."""
    c = desc.config
    if desc.value("tx") is not None:
        return (id(desc),)  # a caller's own optimizer: an engine of its own
    return (canonical_json(c.model), canonical_json(c.optimizer), c.epochs, c.batch_size,
            desc.pre_forward, c.get("eval_every", 1), c.get("checkpoint_every", 1),
            c.get("checkpoint_min_interval_s", 0.0))


@dataclasses.dataclass
class _Prepared:
    """A run ready to train: its locked directory, engine, first state and writers."""

    directory: Path
    config: ConfigDict
    engine: Engine
    member: Member
    held: contextlib.ExitStack


def _prepare(desc: RunDesc, directory: Path, hook: EpochHook | None, dataset, mesh,
             learning_rate, held: contextlib.ExitStack) -> _Prepared:
    config = desc.config
    init_params, mask = desc.value("init_params"), desc.value("mask")
    tx, pre_forward = desc.value("tx"), desc.pre_forward
    # Locked before the engine is built: a second process on this run fails in a moment.
    held.enter_context(lock_run_dir(directory))
    check_inputs(directory, desc)
    steps = data_lib.steps_per_epoch(data_lib.num_train(dataset), config.batch_size)
    if tx is None:
        engine = _cached_engine(config, dataset, steps, pre_forward, mesh)
    else:
        model = build_model(config.model, dataset.num_classes)
        engine = Engine(model, tx, dataset.preprocess, mesh, pre_forward,
                        compute_dtype=compute_dtype(config),
                        compiler_options=_program_options(model, dataset))
    state = engine.init_state(
        jax.random.PRNGKey(config.seed),
        data_lib.sample_images(dataset),
        params=init_params,
        batch_stats=desc.value("init_batch_stats"),
        hook_state=desc.value("hook_state"),
        mask=mask,
    )
    ckpt = Checkpointer(directory)
    held.callback(ckpt.close)  # before the lock is released
    # A caller's own ``tx`` may follow another schedule than the config's: its runs log
    # the one it names, or none rather than a wrong one.
    schedule = (build_schedule(config.optimizer, config.epochs, steps)
                if tx is None else learning_rate)
    # One history per run: process 0 writes it (all processes see the same numbers).
    writer = (make_writer(directory, _logging_config(config), config=desc.identity())
              if is_primary() else None)
    member = Member(state, config.data_seed, ckpt, writer, hook, desc.name, schedule)
    return _Prepared(directory, config, engine, member, held)


def _train_together(descs: list[RunDesc], directories: list[Path], hooks: list, dataset,
                    progress: bool, mesh, learning_rate) -> list[RunResult]:
    """Train ``descs`` (one engine and loop, :func:`_lockstep_key`) in one lockstep fit."""
    for directory in directories:
        finishing.settle(directory)  # these runs finishing in the background
    background = finishing.active()
    with contextlib.ExitStack() as outer:
        runs = []
        for desc, directory, hook in zip(descs, directories, hooks, strict=True):
            held = outer.enter_context(contextlib.ExitStack())
            runs.append(_prepare(desc, directory, hook, dataset, mesh, learning_rate, held))
        config = runs[0].config
        try:
            fitted = fit_lockstep(
                runs[0].engine,
                [run.member for run in runs],
                dataset,
                epochs=config.epochs,
                batch_size=config.batch_size,
                eval_every=config.get("eval_every", 1),
                checkpoint_every=config.get("checkpoint_every", 1),
                checkpoint_min_interval_s=config.get("checkpoint_min_interval_s", 0.0),
                progress=progress,
                finish_in_background=background,
            )
        finally:
            for run in runs:
                if run.member.metrics is not None:
                    run.member.metrics.close()
        results = []
        for run, (state, summary) in zip(runs, fitted, strict=True):
            if background:  # the last write, DONE.json, closing, unlocking: while the next trains
                finishing.defer(run.directory, run.member.checkpointer, run.held.pop_all())
            results.append(RunResult(run.directory, state, summary))
    return results
