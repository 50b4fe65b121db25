"""Lottery-ticket procedures as compositions of the pytree core and the one engine.

* Iterative magnitude pruning (:func:`imp`) with three rewinding modes: ``lrr`` (keep trained
  weights, restart the LR schedule), ``constant`` (keep weights, constant LR and a fresh optimizer
  every round: the AWS/LRR pruning stage of the official code), ``weight`` (LTH: rewind the
  surviving weights to their values after ``rewind_epoch`` epochs).
* AWS (:func:`aws_pre_forward`): every minibatch's forward pass uses norm parameters
  interpolated toward their initial values by one ``alpha ~ U[0, 1)``.
* Ticket transfer (:func:`transfer_init`, :func:`final_run`): retrain, sign transfer, mask
  transfer and a dense baseline from a pruning round.

Every stage is one :func:`~signticket.runs.train_run` in a config-hashed directory, so finished
rounds are reused and a killed pipeline resumes at the round (and epoch) it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from signticket import data as data_lib
from signticket.checkpoint import run_dir
from signticket.masks import apply_mask, check_unit_interval, full_mask, magnitude_prune, sparsity
from signticket.runs import DEFAULT_RUNS_ROOT, RunResult, initial_variables, train_run
from signticket.signs import TRANSFER_DEFAULT, sign_transfer
from signticket.train import PreForward, TrainState
from signticket.tree import LeafPredicate, PyTree, is_norm, is_prunable, named_leaves, select

PRUNING_MODES = ("lrr", "constant", "weight")
TRANSFER_KINDS = ("retrain", "sign_transfer", "mask_transfer", "dense")
REWIND_FILE = "rewind.msgpack"


# -- AWS ------------------------------------------------------------------------------------------


def aws_interpolate(
    params: PyTree, psi_init: PyTree, alpha: jax.Array, where: LeafPredicate = is_norm
) -> PyTree:
    """``psi_eff = alpha * psi_init + (1 - alpha) * psi`` on the leaves ``where`` selects (norm
    scale and bias); other leaves unchanged. Gradients reach ``psi`` through ``psi_eff``."""
    chosen = select(params, where)
    return jax.tree.map(
        lambda c, p, p0: alpha * p0 + (1 - alpha) * p if c else p, chosen, params, psi_init
    )


@functools.cache
def aws_pre_forward(where: LeafPredicate = is_norm) -> PreForward:
    """Engine hook for AWS: one ``alpha ~ U[0, 1)`` per minibatch, shared by all norm layers;
    ``hook_state["psi_init"]`` holds the params at initialization. (Cached: one hook object
    per predicate, so runs sharing it share one compiled step.)"""

    def hook(params: PyTree, hook_state: PyTree, rng: jax.Array) -> PyTree:
        alpha = jax.random.uniform(rng, ())
        return aws_interpolate(params, hook_state["psi_init"], alpha, where)

    return hook


# -- iterative magnitude pruning ------------------------------------------------------------------


@dataclasses.dataclass
class Round:
    """A pruning round's outcome: the trained network and the mask after pruning it.

    Round 0 is the dense warm-up (mask all True). After round ``k`` the mask keeps
    ``(1 - fraction) ** k`` of the prunable weights."""

    index: int
    directory: Path
    params: PyTree
    batch_stats: PyTree
    mask: PyTree
    summary: dict[str, float]

    @property
    def pruned_params(self) -> PyTree:
        return apply_mask(self.params, self.mask)

    @property
    def remaining(self) -> float:
        return 1.0 - float(sparsity(self.mask).overall)


def _stage_config(config: ConfigDict, stage: str, **extra) -> ConfigDict:
    """The config of one train run of a pipeline: what ``train_run`` reads plus everything
    upstream that shapes it (so its hash names it uniquely)."""
    keys = (
        "seed",
        "data_seed",
        "model",
        "data",
        "optimizer",
        "batch_size",
        "eval_every",
        "checkpoint_every",
    )
    c = ConfigDict({k: config[k] for k in keys if k in config})
    c.stage = stage
    for k, v in extra.items():
        c[k] = v
    return ConfigDict(c.to_dict())


def _imp_identity(config: ConfigDict) -> dict:
    # Round r depends on the pruning settings but not on how many rounds come after it.
    imp = config.imp.to_dict()
    imp.pop("rounds", None)
    return {"imp": imp, "aws": bool(config.get("aws", False))}


def _save_rewind(directory: Path, epoch: int):
    def hook(e: int, state: TrainState) -> TrainState:
        if e == epoch:
            blob = flax.serialization.to_bytes(
                {"params": state.params, "batch_stats": state.batch_stats}
            )
            tmp = directory / (REWIND_FILE + ".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, directory / REWIND_FILE)
        return state

    return hook


def _check_imp(config: ConfigDict) -> None:
    imp = config.imp
    if imp.mode not in PRUNING_MODES:
        raise ValueError(
            f"unknown pruning mode {imp.mode!r}; available: {', '.join(PRUNING_MODES)}"
        )
    check_unit_interval("pruning fraction", imp.fraction)
    if imp.rounds < 0 or imp.epochs_per_round <= 0 or imp.warmup_epochs < 0:
        raise ValueError("imp.rounds, imp.warmup_epochs must be >= 0 and imp.epochs_per_round > 0")
    if imp.mode == "weight" and not 0 <= imp.rewind_epoch <= imp.warmup_epochs:
        raise ValueError(
            f"imp.rewind_epoch ({imp.rewind_epoch}) must lie in [0, imp.warmup_epochs "
            f"({imp.warmup_epochs})]: weights are rewound to that epoch of the warm-up"
        )


def _prune(params: PyTree, mask: PyTree, fraction: float, scope: str, index: int) -> PyTree:
    surviving = sum(int(jnp.sum(m)) for p, m in named_leaves(mask) if is_prunable(p))
    if round(fraction * surviving) < 1:
        raise ValueError(
            f"round {index}: nothing left to prune ({surviving} prunable weights survive, "
            f"{fraction:.0%} of them rounds to 0); use fewer rounds"
        )
    return magnitude_prune(params, mask, fraction, scope)


def imp(
    config: ConfigDict,
    dataset: data_lib.Dataset,
    *,
    runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT,
    progress: bool = True,
) -> list[Round]:
    """Warm-up, then ``config.imp.rounds`` rounds of train-then-prune; returns every round.

    ``config``: ``seed, data_seed, model, data, optimizer, batch_size`` (as for a train run),
    ``aws`` (bool) and ``imp = {mode, warmup_epochs, rounds, epochs_per_round, fraction,
    scope, rewind_epoch}``. Finished rounds are read back from their run directories.
    """
    _check_imp(config)
    imp_cfg = config.imp
    aws = bool(config.get("aws", False))
    identity = _imp_identity(config)
    init = initial_variables(config, dataset)
    hook = aws_pre_forward() if aws else None
    hook_state = {"psi_init": init["params"]} if aws else None
    tag = f"imp-{imp_cfg.mode}{'-aws' if aws else ''}"

    warm_cfg = _stage_config(config, "imp", round=0, epochs=imp_cfg.warmup_epochs, **identity)
    warm_dir = run_dir(runs_root, warm_cfg, f"{tag}-r00")
    rewind_hook = (
        _save_rewind(warm_dir, imp_cfg.rewind_epoch)
        if imp_cfg.mode == "weight" and imp_cfg.rewind_epoch > 0
        else None
    )
    res = train_run(
        warm_cfg,
        dataset,
        name=f"{tag}-r00",
        runs_root=runs_root,
        init_params=init["params"],
        init_batch_stats=init["batch_stats"],
        pre_forward=hook,
        hook_state=hook_state,
        on_epoch_end=rewind_hook,
        progress=progress,
    )
    rounds = [
        Round(
            0,
            res.directory,
            res.state.params,
            res.state.batch_stats,
            full_mask(res.state.params),
            res.summary,
        )
    ]
    rewind = _rewind_point(imp_cfg, init, res)
    for r in range(1, imp_cfg.rounds + 1):
        prev = rounds[-1]
        if imp_cfg.mode == "weight":
            start, stats = apply_mask(rewind["params"], prev.mask), rewind["batch_stats"]
        else:
            start, stats = prev.pruned_params, prev.batch_stats
        optimizer = config.optimizer.to_dict()
        if imp_cfg.mode == "constant":
            optimizer.update(schedule="constant", warmup_epochs=0)
        cfg = _stage_config(config, "imp", round=r, epochs=imp_cfg.epochs_per_round, **identity)
        cfg.optimizer = ConfigDict(optimizer)
        cfg.data_seed = config.data_seed + r  # a new data order every round
        res = train_run(
            cfg,
            dataset,
            name=f"{tag}-r{r:02d}",
            runs_root=runs_root,
            init_params=start,
            init_batch_stats=stats,
            mask=prev.mask,
            pre_forward=hook,
            hook_state=hook_state,
            progress=progress,
        )
        mask = _prune(res.state.params, prev.mask, imp_cfg.fraction, imp_cfg.scope, r)
        rounds.append(
            Round(r, res.directory, res.state.params, res.state.batch_stats, mask, res.summary)
        )
    return rounds


def _rewind_point(imp_cfg: ConfigDict, init: dict, warm: RunResult) -> dict | None:
    if imp_cfg.mode != "weight":
        return None
    if imp_cfg.rewind_epoch == 0:
        return init
    path = warm.directory / REWIND_FILE
    if not path.exists():
        raise ValueError(
            f"{path} is missing: the warm-up run finished without its rewind point; "
            f"delete {warm.directory} to redo it"
        )
    template = {"params": warm.state.params, "batch_stats": warm.state.batch_stats}
    return flax.serialization.from_bytes(template, path.read_bytes())


# -- ticket transfer ------------------------------------------------------------------------------


def transfer_init(
    kind: str,
    source: Round | None,
    fresh: dict[str, PyTree],
    which: LeafPredicate = TRANSFER_DEFAULT,
) -> tuple[PyTree, PyTree, PyTree]:
    """``(params, batch_stats, mask)`` a final run starts from.

    ``retrain``: the pruned trained network; ``sign_transfer``: ``|fresh| * sign(pruned) * mask``
    on the ``which`` leaves (kernels, biases, head), norm params and BN statistics from ``fresh``;
    ``mask_transfer``: ``fresh * mask``; ``dense``: ``fresh`` unmasked.
    """
    if kind not in TRANSFER_KINDS:
        raise ValueError(f"unknown transfer {kind!r}; available: {', '.join(TRANSFER_KINDS)}")
    if kind == "dense":
        return fresh["params"], fresh["batch_stats"], full_mask(fresh["params"])
    if source is None:
        raise ValueError(f"transfer {kind!r} needs a pruning round as its source")
    if kind == "retrain":
        return source.pruned_params, source.batch_stats, source.mask
    if kind == "sign_transfer":
        params = sign_transfer(fresh["params"], source.params, source.mask, which)
    else:
        params = apply_mask(fresh["params"], source.mask)
    return params, fresh["batch_stats"], source.mask


def final_run(
    kind: str,
    source: Round | None,
    config: ConfigDict,
    dataset: data_lib.Dataset,
    *,
    init_seed: int,
    runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT,
    progress: bool = True,
) -> RunResult:
    """Train a ticket from ``source`` with the final schedule ``config.final`` (no AWS).

    ``init_seed`` draws the fresh initialization (unused by ``retrain``)."""
    cfg = _stage_config(
        config,
        "final",
        kind=kind,
        source=source.directory.name if source is not None else "none",
        epochs=config.final.epochs,
    )
    cfg.optimizer = ConfigDict(config.final.optimizer.to_dict())
    cfg.seed = init_seed if kind != "retrain" else config.seed
    fresh = initial_variables(cfg, dataset)
    params, stats, mask = transfer_init(kind, source, fresh)
    # e.g. "final-sign_transfer-imp-constant-aws-r10": the kind and the round it came from
    name = f"final-{kind}" + (f"-{source.directory.name.rsplit('-', 1)[0]}" if source else "")
    return train_run(
        cfg,
        dataset,
        name=name,
        runs_root=runs_root,
        init_params=params,
        init_batch_stats=stats,
        mask=mask,
        progress=progress,
    )
