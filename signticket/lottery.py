"""Lottery-ticket procedures as compositions of the pytree core and the one engine.

* :func:`imp` is the one iterative-magnitude-pruning driver. Round 0 is the dense warm-up; round
  ``k >= 1`` prunes round ``k - 1``'s trained weights to its mask ``M_k`` (``(1 - fraction) ** k``
  of the prunable weights) and then *trains under ``M_k``*. A :class:`Round` therefore carries the
  mask it was trained under and the weights trained under it, as the official AWS code's
  ``checkpoint_iter{k}`` does (``train.py``: train iteration ``k``, save, then prune). How a
  round starts and trains is a :class:`RoundPolicy` from :data:`ROUND_POLICIES` (``lrr``,
  ``constant``, ``weight`` rewinding, ``ft`` fine-tuning); which weights are scored is a
  predicate from :data:`PRUNING_SCOPES`; how many are removed is a rule from :data:`COUNT_RULES`.
* AWS (:func:`aws_pre_forward`): every minibatch's forward pass uses norm parameters
  interpolated toward their initial values by one ``alpha ~ U[0, 1)``.
* Ticket starts (:data:`TICKET_STARTS`, :func:`final_run`): small registered functions of
  ``(parent round, fresh init)`` -- retrain, sign transfer, mask transfer, dense.

Every stage is one :func:`~signticket.runs.train_run` of a typed
:class:`~signticket.run_desc.RunDesc` whose inputs name their parent run, so finished rounds are
reused and a killed pipeline resumes at the round
(and epoch) it stopped.

IMP variants reuse the driver rather than loop themselves. :func:`imp_rounds` takes any trained
network as ``round0``, runs unbounded when ``imp.rounds`` is absent (rounds train lazily, one per
``next``), and lets a caller override the epochs, the count (``kept``) and the run-config layout
(``run_config``, a function of the :class:`RoundRun` the driver decided). :func:`imp_targets`
runs one chain until every target sparsity is reached and cuts each target exactly
(:data:`CUT_RULES`, :func:`cut_at`) from the round that would pass it. The permuted-mask
pipeline's IMP (``rebasin.procedure.imp_masks``: IMP-FT or IMP-rewind after dense training, the
``sparse_rebasin`` or ``no_head`` scope) is exactly that, with its own run-config layout so its
run directories kept their names; ``tests/test_imp_unified.py`` pins it against its former loop.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from signticket import data as data_lib
from signticket import finishing
from signticket.errors import UserError
from signticket.masks import apply_mask, check_unit_interval, full_mask, magnitude_prune, sparsity
from signticket.phases import phase
from signticket.rebasin.prune_scope import sparse_rebasin_prunable
from signticket.run_desc import Input, RunDesc
from signticket.runs import (
    DEFAULT_RUNS_ROOT,
    RunResult,
    check_run_config,
    initial_variables,
    stage_config,
    train_run,
)
from signticket.signs import TRANSFER_DEFAULT, sign_transfer
from signticket.train import PreForward, TrainState
from signticket.tree import (
    LeafPredicate,
    PyTree,
    is_kernel,
    is_norm,
    is_prunable,
    named_leaves,
    select,
)

REWIND_FILE = "rewind.msgpack"
Variables = dict[str, PyTree]  # {"params": ..., "batch_stats": ...}


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


# -- rounds and policies --------------------------------------------------------------------------


@dataclasses.dataclass
class Round:
    """One IMP round: the mask it was trained under and the weights trained under it.

    Round 0 is the dense warm-up (mask all True). Round ``k`` trained under a mask keeping
    ``(1 - fraction) ** k`` of the prunable weights (up to the count rule's rounding); its
    ``params`` are exactly zero outside ``mask``."""

    index: int
    directory: Path | None
    params: PyTree
    batch_stats: PyTree
    mask: PyTree
    summary: dict[str, float]
    name: str = ""  # the run's name (its directory is ``<name>-<hash>``); "" if hand-built

    @property
    def pruned_params(self) -> PyTree:
        # Already masked when trained under the mask (the engine keeps pruned entries at 0);
        # applying it again makes hand-built rounds safe too.
        return apply_mask(self.params, self.mask)

    @property
    def remaining(self) -> float:
        return 1.0 - float(sparsity(self.mask).overall)

    @property
    def variables(self) -> Variables:
        return {"params": self.pruned_params, "batch_stats": self.batch_stats}


@dataclasses.dataclass(frozen=True)
class RoundPolicy:
    """How a round after the warm-up starts and trains.

    ``start(parent, rewind)``: the unmasked ``(params, batch_stats)`` the round starts from, given
    the previous round and the rewind point (``None`` unless the policy rewinds);
    ``optimizer(config)``: the round's optimizer config (from the IMP config);
    ``warmup_optimizer(config)``: the warm-up's; ``rewinds``: whether a rewind point is kept.
    """

    name: str
    start: Callable[[Round, Variables | None], tuple[PyTree, PyTree]]
    optimizer: Callable[[ConfigDict], ConfigDict]
    warmup_optimizer: Callable[[ConfigDict], ConfigDict]
    rewinds: bool = False


def _keep(parent: Round, rewind: Variables | None) -> tuple[PyTree, PyTree]:
    return parent.params, parent.batch_stats


def _rewound(parent: Round, rewind: Variables | None) -> tuple[PyTree, PyTree]:
    assert rewind is not None
    return rewind["params"], rewind["batch_stats"]


def _own_optimizer(config: ConfigDict) -> ConfigDict:
    return ConfigDict(config.optimizer.to_dict())


def _constant_optimizer(config: ConfigDict) -> ConfigDict:
    # Official train.py steps its scheduler only outside the pruning stage (`if not
    # is_pruning_stage: scheduler.step()`) and builds a fresh optimizer every iteration: the
    # warm-up and every round run at the base LR, momentum reset.
    c = config.optimizer.to_dict()
    c.update(schedule="constant", warmup_epochs=0)
    return ConfigDict(c)


def _ft_optimizer(config: ConfigDict) -> ConfigDict:
    return ConfigDict(config.imp.ft_optimizer.to_dict())


ROUND_POLICIES: dict[str, RoundPolicy] = {}


def register_policy(policy: RoundPolicy, *, overwrite: bool = False) -> RoundPolicy:
    """Add a round policy under ``policy.name`` (``ValueError`` if taken, unless ``overwrite``)."""
    if policy.name in ROUND_POLICIES and not overwrite:
        raise UserError(f"round policy {policy.name!r} is already registered")
    ROUND_POLICIES[policy.name] = policy
    return policy


# LRR: keep the trained weights, restart the LR schedule every round.
register_policy(RoundPolicy("lrr", _keep, _own_optimizer, _own_optimizer))
# The AWS/LRR pruning stage of the official code: keep weights, constant LR, fresh optimizer.
register_policy(RoundPolicy("constant", _keep, _constant_optimizer, _constant_optimizer))
# LTH weight rewinding: survivors go back to their values after imp.rewind_epoch warm-up epochs.
register_policy(RoundPolicy("weight", _rewound, _own_optimizer, _own_optimizer, rewinds=True))
# Fine-tuning: keep weights, train each round with imp.ft_optimizer.
register_policy(RoundPolicy("ft", _keep, _ft_optimizer, _own_optimizer))

#: Backward-compatible name for the registered policies.
PRUNING_MODES = tuple(ROUND_POLICIES)

#: Which leaves a round scores and prunes (the predicate says everything: ``magnitude_prune``
#: runs with ``keep_dense=()``, so a scope that selects the head prunes it).
PRUNING_SCOPES: dict[str, LeafPredicate] = {
    # Official AWS models/utils.py: every nn.Conv2d and every nn.Linear except the classifier
    # (`m.weight.shape[0] != num_classes`) gets a mask; biases and norm params never do.
    "kernels_except_head": is_prunable,
    "kernels": is_kernel,
    # The permuted-mask pipeline's ``imp.prune_scope`` names (rebasin/prune_scope.py):
    # sparse-rebasin's pruning.py 27-36, every Conv2d / Linear, head included, shortcuts dense;
    # and the library default, every kernel but the classifier (= kernels_except_head).
    "sparse_rebasin": sparse_rebasin_prunable,
    "no_head": is_prunable,
}


def pruning_scope(name: str) -> LeafPredicate:
    """The predicate registered as ``name`` in :data:`PRUNING_SCOPES` (``UserError`` if none)."""
    if name not in PRUNING_SCOPES:
        raise UserError(f"unknown pruning scope {name!r}; available: {', '.join(PRUNING_SCOPES)}")
    return PRUNING_SCOPES[name]


def _kept_round(n: int, fraction: float) -> int:
    return n - round(fraction * n)


def _kept_official(n: int, fraction: float) -> int:
    # utils/prune.py: `topk(int(weights.shape[0] * (1 - pruning_ratio)))` keeps that many of the
    # surviving weights (the count truncates; float64 arithmetic as in Python).
    return int(n * (1 - fraction))


#: ``kept(n_surviving, fraction)``: how many surviving prunable weights a round keeps.
COUNT_RULES: dict[str, Callable[[int, float], int]] = {
    "round": _kept_round,
    "official_aws": _kept_official,
}


def kept_at_sparsity(total: int, sparsity: float) -> int:
    """How many of ``total`` scope weights a mask cut exactly at ``sparsity`` keeps:
    ``round(sparsity * total)`` pruned (sparse-rebasin counts sparsity over the masked layers,
    ``utils.calculate_overall_sparsity_from_pth``)."""
    return total - round(sparsity * total)


#: ``kept(total, target)``: how many scope weights a cut at a target sparsity keeps
#: (:func:`imp_targets`; ``imp.cut_rule``, default ``"exact"``).
CUT_RULES: dict[str, Callable[[int, float], int]] = {"exact": kept_at_sparsity}


def _count(mask: PyTree, prunable: LeafPredicate) -> int:
    chosen = [m for p, m in named_leaves(mask) if prunable(p)]
    return int(_true_count(chosen)) if chosen else 0


@jax.jit
def _true_count(masks: list[jax.Array]) -> jax.Array:
    # One small program per architecture (a single reduction), not one eager sum per leaf,
    # each compiled for its leaf's shape.
    return jnp.sum(jnp.concatenate([jnp.ravel(m) for m in masks]), dtype=jnp.int64
                   if jax.config.jax_enable_x64 else jnp.int32)


def _size(mask: PyTree, prunable: LeafPredicate) -> int:
    return sum(int(jnp.size(m)) for p, m in named_leaves(mask) if prunable(p))


@phase("pruning")
def prune_round(
    params: PyTree,
    mask: PyTree,
    fraction: float,
    *,
    scope: str = "global",
    prunable: str = "kernels_except_head",
    count_rule: str = "round",
    index: int = 0,
    kept: int | None = None,
) -> PyTree:
    """The next round's mask: drop the smallest-|theta| surviving weights of the ``prunable``
    leaves, keeping ``COUNT_RULES[count_rule](surviving, fraction)`` of them, or exactly ``kept``
    when given (global scope; the layerwise scope applies ``fraction`` per leaf). Pruned weights
    never come back. The scope's predicate alone decides the pruned leaves (``keep_dense=()``):
    ``sparse_rebasin`` and ``kernels`` prune the head, ``kernels_except_head`` does not."""
    predicate = pruning_scope(prunable)
    surviving = _count(mask, predicate)
    if kept is None:
        kept = COUNT_RULES[count_rule](surviving, fraction)
    if surviving - kept < 1:
        raise UserError(
            f"round {index}: nothing left to prune ({surviving} prunable weights survive, "
            f"{fraction:.0%} of them rounds to 0); use fewer rounds"
        )
    if scope == "layerwise":
        return magnitude_prune(params, mask, fraction, scope, predicate, keep_dense=())
    # magnitude_prune removes round(f * surviving): f = removed / surviving gives the exact count.
    return magnitude_prune(params, mask, (surviving - kept) / surviving, scope, predicate,
                           keep_dense=())


# -- the IMP driver -------------------------------------------------------------------------------


def _stage_config(config: ConfigDict, stage: str, **extra) -> ConfigDict:
    """A train run's config in this pipeline: seed, data order and optimizer from ``config``
    unless ``extra`` sets them (:func:`signticket.runs.stage_config`)."""
    fields = {"seed": config.seed, "data_seed": config.data_seed,
              "optimizer": config.optimizer, "epochs": 0, **extra}
    return stage_config(config, stage, **fields)


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
    if imp.mode not in ROUND_POLICIES:
        raise UserError(
            f"unknown pruning mode {imp.mode!r}; available: {', '.join(ROUND_POLICIES)}"
        )
    check_unit_interval("pruning fraction", imp.fraction)
    if imp.rounds < 0 or imp.epochs_per_round <= 0 or imp.warmup_epochs < 0:
        raise UserError("imp.rounds, imp.warmup_epochs must be >= 0 and imp.epochs_per_round > 0")
    if imp.mode == "weight" and not 0 <= imp.rewind_epoch <= imp.warmup_epochs:
        raise UserError(
            f"imp.rewind_epoch ({imp.rewind_epoch}) must lie in [0, imp.warmup_epochs "
            f"({imp.warmup_epochs})]: weights are rewound to that epoch of the warm-up"
        )
    if imp.get("prunable", "kernels_except_head") not in PRUNING_SCOPES:
        raise UserError(f"unknown imp.prunable {imp.prunable!r}; available: "
                         f"{', '.join(PRUNING_SCOPES)}")
    if imp.get("count_rule", "round") not in COUNT_RULES:
        raise UserError(f"unknown imp.count_rule {imp.count_rule!r}; available: "
                         f"{', '.join(COUNT_RULES)}")


def _rewind_point(imp_cfg: ConfigDict, init: Variables, warm: RunResult) -> Variables | None:
    if not ROUND_POLICIES[imp_cfg.mode].rewinds:
        return None
    if imp_cfg.rewind_epoch == 0:
        return init
    path = warm.directory / REWIND_FILE
    if not path.exists():
        raise UserError(
            f"{path} is missing: the warm-up run finished without its rewind point; "
            f"delete {warm.directory} to redo it"
        )
    template = {"params": warm.state.params, "batch_stats": warm.state.batch_stats}
    return flax.serialization.from_bytes(template, path.read_bytes())


@dataclasses.dataclass(frozen=True)
class RoundRun:
    """What the driver decided for round ``index``'s train run, for a caller that lays out the
    run's config (and so its identity) itself (:func:`imp_rounds`'s ``run_config``)."""

    index: int
    parent: str  # the parent run's directory name ("none" for a hand-built round 0)
    optimizer: ConfigDict  # the policy's optimizer for the round
    epochs: int
    data_seed: int  # config.data_seed + index: a new data order every round
    kept: int  # surviving weights of the scope after pruning
    pruned: int  # pruned weights of the scope after pruning (scope size - kept)


def imp_rounds(
    config: ConfigDict,
    dataset: data_lib.Dataset,
    round0: Round,
    *,
    rewind: Variables | None = None,
    name: str = "imp",
    pre_forward: PreForward | None = None,
    hook_state: PyTree | None = None,
    hook_state_source: str = "none",
    runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT,
    progress: bool = True,
    epochs: int | None = None,
    kept: Callable[[int, int], int] | None = None,
    run_config: Callable[[RoundRun], ConfigDict] | None = None,
) -> Iterator[Round]:
    """Rounds ``1..config.imp.rounds`` after ``round0`` (without ``imp.rounds``: unbounded, the
    caller stops iterating): prune the parent, start as the policy says, train under the new
    mask. Rounds are trained lazily, one per ``next``. Each round's inputs name its parent
    run and how many weights it keeps, so no stale run is reused when anything upstream changes.

    ``round0`` may be any trained network (a dense run for IMP-after-training). ``epochs``
    overrides ``imp.epochs_per_round`` (e.g. weight rewinding to epoch k of a T-epoch run trains
    T - k); ``kept(r, surviving)`` overrides the count rule; ``run_config(RoundRun)`` lays out
    the round's run config (default: this module's, with the IMP settings as identity) -- the
    driver still decides the mask, start, optimizer, epochs and data order."""
    imp_cfg = config.imp
    policy = ROUND_POLICIES[imp_cfg.mode]
    predicate_name = imp_cfg.get("prunable", "kernels_except_head")
    predicate = pruning_scope(predicate_name)
    total = _size(round0.mask, predicate)
    limit = imp_cfg.get("rounds")
    parent = round0
    for r in itertools.count(1) if limit is None else range(1, limit + 1):
        surviving = _count(parent.mask, predicate)
        mask = prune_round(
            parent.params, parent.mask, imp_cfg.fraction, scope=imp_cfg.scope,
            prunable=predicate_name, count_rule=imp_cfg.get("count_rule", "round"), index=r,
            kept=None if kept is None else kept(r, surviving),
        )
        params, stats = policy.start(parent, rewind)
        n_kept = _count(mask, predicate)
        run = RoundRun(
            index=r, parent=parent.directory.name if parent.directory else "none",
            optimizer=policy.optimizer(config),
            epochs=imp_cfg.epochs_per_round if epochs is None else epochs,
            data_seed=config.data_seed + r, kept=n_kept, pruned=total - n_kept,
        )
        if run_config is None:
            cfg = _stage_config(config, "imp", round=r, epochs=run.epochs,
                                **_imp_identity(config))
            cfg.optimizer = run.optimizer
            cfg.data_seed = run.data_seed
        else:
            cfg = run_config(run)
        pruned_from = f"prune({run.parent}, {predicate_name}, kept {n_kept})"
        start = f"{policy.name}.start({run.parent}" + (", rewind point)" if rewind else ")")
        run_name = f"{name}-r{r:02d}"
        res = train_run(
            RunDesc(
                cfg,
                name=run_name,
                init_params=Input(apply_mask(params, mask), f"{start} * {pruned_from}"),
                init_batch_stats=Input(stats, start),
                mask=Input(mask, pruned_from),
                hook_state=None if hook_state is None else Input(hook_state, hook_state_source),
                pre_forward=pre_forward,
            ),
            dataset,
            runs_root=runs_root,
            progress=progress,
        )
        parent = Round(r, res.directory, res.state.params, res.state.batch_stats, mask,
                       res.summary, name=run_name)
        yield parent


@dataclasses.dataclass
class TargetCuts:
    """Masks cut exactly at target sparsities off one IMP chain (:func:`imp_targets`)."""

    masks: dict[float, PyTree]  # target -> mask
    sources: dict[float, Round]  # target -> the trained round its mask was cut from
    chain: list[Round]  # the rounds trained (round0 excluded)


def cut_at(parent: Round, sparsity: float, prunable: str, rule: str = "exact") -> PyTree:
    """``parent``'s mask pruned further, by magnitude of its trained weights, to exactly
    ``sparsity`` of the ``prunable`` scope (``CUT_RULES[rule]``); no training. A target below
    the parent's sparsity is not reached: the parent's mask is returned."""
    predicate = pruning_scope(prunable)
    keep = CUT_RULES[rule](_size(parent.mask, predicate), sparsity)
    if _count(parent.mask, predicate) - keep <= 0:
        return parent.mask
    return prune_round(parent.params, parent.mask, 0.0, prunable=prunable, index=parent.index,
                       kept=keep)


def imp_targets(
    config: ConfigDict,
    dataset: data_lib.Dataset,
    round0: Round,
    targets: Sequence[float],
    **kwargs,
) -> TargetCuts:
    """IMP until every target sparsity: one chain of :func:`imp_rounds` (``config.imp``
    without ``rounds``) serves all targets; before each round, every target that round's count
    rule would reach or pass is cut exactly from the current round (:func:`cut_at`), so the
    rounds before a target are shared (and reused from their run directories). ``kwargs`` go
    to :func:`imp_rounds`. (sparse-rebasin also fine-tunes after its final cut; that training
    does not change the mask.)"""
    imp_cfg = config.imp
    prunable = imp_cfg.get("prunable", "kernels_except_head")
    predicate = pruning_scope(prunable)
    for t in targets:
        check_unit_interval("target sparsity", t)
    rule = COUNT_RULES[imp_cfg.get("count_rule", "round")]
    cut_rule = imp_cfg.get("cut_rule", "exact")
    total = _size(round0.mask, predicate)
    pending = sorted({float(t) for t in targets})
    out = TargetCuts({}, {}, [])
    chain = imp_rounds(config, dataset, round0, **kwargs)
    parent = round0
    while True:
        surviving = _count(parent.mask, predicate)
        step = surviving - rule(surviving, imp_cfg.fraction)  # what the next round prunes
        for t in list(pending):
            if total - CUT_RULES[cut_rule](total, t) - (total - surviving) <= step:
                out.masks[t] = cut_at(parent, t, prunable, cut_rule)
                out.sources[t] = parent
                pending.remove(t)
        if not pending:
            return out
        parent = next(chain, None)
        if parent is None:
            raise UserError(f"imp.rounds={imp_cfg.rounds} ran out before target sparsities "
                            f"{pending}; leave imp.rounds unset to prune until they are reached")
        out.chain.append(parent)


def imp(
    config: ConfigDict,
    dataset: data_lib.Dataset,
    *,
    runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT,
    progress: bool = True,
) -> list[Round]:
    """Warm-up (round 0), then ``config.imp.rounds`` rounds of prune-then-train; every round.

    ``config``: ``seed, data_seed, model, data, optimizer, batch_size`` (as for a train run),
    ``aws`` (bool) and ``imp = {mode, warmup_epochs, rounds, epochs_per_round, fraction,
    scope, rewind_epoch}`` plus optional ``prunable`` (:data:`PRUNING_SCOPES`), ``count_rule``
    (:data:`COUNT_RULES`) and ``ft_optimizer`` (``ft`` mode). ``rounds[k]`` was trained under
    ``rounds[k].mask``. Finished rounds are read back from their run directories.
    """
    _check_imp(config)
    with finishing.background_finishes():  # a round's last write overlaps the next round
        return _imp(config, dataset, runs_root, progress)


def _imp(config: ConfigDict, dataset: data_lib.Dataset, runs_root: str | os.PathLike,
         progress: bool) -> list[Round]:
    imp_cfg = config.imp
    policy = ROUND_POLICIES[imp_cfg.mode]
    aws = bool(config.get("aws", False))
    identity = _imp_identity(config)
    init = initial_variables(config, dataset)
    hook = aws_pre_forward() if aws else None
    hook_state = {"psi_init": init["params"]} if aws else None
    tag = f"imp-{imp_cfg.mode}{'-aws' if aws else ''}"

    warm_cfg = _stage_config(config, "imp", round=0, epochs=imp_cfg.warmup_epochs, **identity)
    warm_cfg.optimizer = policy.warmup_optimizer(config)
    check_run_config(warm_cfg, runs_root)  # before any directory exists
    init_source = f"init(seed {config.seed})"
    hook_source = f"psi_init = {init_source}" if aws else "none"
    warm = RunDesc(
        warm_cfg,
        name=f"{tag}-r00",
        init_params=Input(init["params"], init_source),
        init_batch_stats=Input(init["batch_stats"], init_source),
        hook_state=None if hook_state is None else Input(hook_state, hook_source),
        pre_forward=hook,
    )
    warm_dir = warm.directory(runs_root)
    rewind_hook = (
        _save_rewind(warm_dir, imp_cfg.rewind_epoch)
        if policy.rewinds and imp_cfg.rewind_epoch > 0
        else None
    )
    res = train_run(warm, dataset, runs_root=runs_root, on_epoch_end=rewind_hook,
                    progress=progress)
    round0 = Round(0, res.directory, res.state.params, res.state.batch_stats,
                   full_mask(res.state.params), res.summary, name=warm.name)
    rewind = _rewind_point(imp_cfg, init, res)
    later = imp_rounds(config, dataset, round0, rewind=rewind, name=tag, pre_forward=hook,
                       hook_state=hook_state, hook_state_source=hook_source,
                       runs_root=runs_root, progress=progress)
    return [round0, *later]


# -- ticket starts --------------------------------------------------------------------------------

#: ``start(parent, fresh) -> (params, batch_stats, mask)``: where a final run begins, from the
#: round it comes from (``None`` for starts that need none) and a fresh initialization.
TicketStart = Callable[[Round | None, Variables], tuple[PyTree, PyTree, PyTree]]
TICKET_STARTS: dict[str, TicketStart] = {}
#: Starts that never read the fresh init (their run's seed does not name them).
NO_FRESH_INIT: set[str] = set()


def register_start(name: str, *, uses_fresh: bool = True, overwrite: bool = False):
    """Decorator adding a ticket start under ``name``."""

    def decorator(fn: TicketStart) -> TicketStart:
        if name in TICKET_STARTS and not overwrite:
            raise UserError(f"ticket start {name!r} is already registered")
        TICKET_STARTS[name] = fn
        if not uses_fresh:
            NO_FRESH_INIT.add(name)
        return fn

    return decorator


def _need(parent: Round | None, kind: str) -> Round:
    if parent is None:
        raise UserError(f"transfer {kind!r} needs a pruning round as its source")
    return parent


@register_start("retrain", uses_fresh=False)
def _retrain(parent: Round | None, fresh: Variables):
    # Official: `model.load_state_dict(checkpoint_iter{k})` -- trained weights, norm params and
    # BN running statistics of round k, its mask (fixed_m is in the state dict).
    p = _need(parent, "retrain")
    return p.pruned_params, p.batch_stats, p.mask


@register_start("sign_transfer")
def _sign_transfer(parent: Round | None, fresh: Variables, which=TRANSFER_DEFAULT):
    # Official utils/mask_transfer.py::sign_transfer: |init| * sign(w * fixed_m) on masked
    # layers (and their biases), |init| * sign(w) on the unpruned classifier; BN weights, biases
    # and running stats from the fresh init.
    p = _need(parent, "sign_transfer")
    return sign_transfer(fresh["params"], p.params, p.mask, which), fresh["batch_stats"], p.mask


@register_start("mask_transfer")
def _mask_transfer(parent: Round | None, fresh: Variables):
    p = _need(parent, "mask_transfer")
    return apply_mask(fresh["params"], p.mask), fresh["batch_stats"], p.mask


@register_start("dense")
def _dense(parent: Round | None, fresh: Variables):
    return fresh["params"], fresh["batch_stats"], full_mask(fresh["params"])


@register_start("signs_only")
def _signs_only(parent: Round | None, fresh: Variables):
    # Control: the parent's signs on the fresh magnitudes, no mask (dense).
    p = _need(parent, "signs_only")
    return sign_transfer(fresh["params"], p.params, None), fresh["batch_stats"], full_mask(
        fresh["params"])


#: Backward-compatible names of the built-in starts.
TRANSFER_KINDS = tuple(TICKET_STARTS)


def transfer_init(
    kind: str,
    source: Round | None,
    fresh: Variables,
    which: LeafPredicate = TRANSFER_DEFAULT,
) -> tuple[PyTree, PyTree, PyTree]:
    """``(params, batch_stats, mask)`` a final run starts from (:data:`TICKET_STARTS`).

    ``retrain``: the round's trained network under its mask; ``sign_transfer``:
    ``|fresh| * sign(round) * mask`` on the ``which`` leaves (kernels, biases, head), norm params
    and BN statistics from ``fresh``; ``mask_transfer``: ``fresh * mask``; ``dense``: ``fresh``.
    """
    if kind not in TICKET_STARTS:
        raise UserError(f"unknown transfer {kind!r}; available: {', '.join(TICKET_STARTS)}")
    if kind == "sign_transfer":
        return _sign_transfer(source, fresh, which)
    return TICKET_STARTS[kind](source, fresh)


def final_run(
    kind: str,
    source: Round | None,
    config: ConfigDict,
    dataset: data_lib.Dataset,
    *,
    init_seed: int,
    data_seed: int | None = None,
    runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT,
    progress: bool = True,
) -> RunResult:
    """Train a ticket from ``source`` with the final schedule ``config.final`` (no AWS).

    ``init_seed`` draws the fresh initialization (unused by ``retrain``); ``data_seed`` the data
    order (default ``config.data_seed``). The official final runs take ``--seed ft_seed`` for
    the data order and draw the init before seeding, so two final runs of one kind differ in
    init *and* data order: pass different ``data_seed`` for them."""
    cfg = _stage_config(config, "final", kind=kind, epochs=config.final.epochs)
    cfg.optimizer = ConfigDict(config.final.optimizer.to_dict())
    cfg.seed = config.seed if kind in NO_FRESH_INIT else init_seed
    if data_seed is not None:
        cfg.data_seed = data_seed
    fresh = initial_variables(cfg, dataset)
    params, stats, mask = transfer_init(kind, source, fresh)
    parent = source.directory.name if source is not None and source.directory else "none"
    recipe = f"{kind}({parent}" + (")" if kind in NO_FRESH_INIT else f", init seed {cfg.seed})")
    # e.g. "final-sign_transfer-imp-constant-aws-r10": the kind and the round it came from
    name = f"final-{kind}" + (f"-{source.name}" if source is not None and source.name else "")
    return train_run(
        RunDesc(cfg, name=name, init_params=Input(params, recipe),
                init_batch_stats=Input(stats, recipe), mask=Input(mask, recipe)),
        dataset,
        runs_root=runs_root,
        progress=progress,
    )
