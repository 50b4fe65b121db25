"""Permuted lottery-ticket masks (Adnan et al., ICML 2025) as a composition of resumable runs.

Dense A (init A) and dense B (init B) share one schedule; their weights at rewind point ``k``
are kept (``config.rewind_convention``: ``"exact"``, after exactly ``k`` epochs; ``"official"``,
sparse-rebasin's ``--rewind k``, the checkpoint saved after 0-based epoch ``k``, i.e. after
``k + 1`` epochs). IMP on A gives the mask ``M_A`` (``ft``: prune 20 % of the survivors of the
``config.imp.prune_scope`` layers, fine-tune, repeat; ``rewind``: LTH-style, rewind the
survivors each round) -- the one IMP driver, :func:`signticket.lottery.imp_targets`, with
dense A as round 0 (:func:`imp_masks` only maps the config onto it). The matching ``pi`` with
``pi(A_T) ≈ B_T`` carries A's mask into B's basin, and four sparse runs train for ``T - k``
epochs (under both conventions, as the official code):

* ``lth``:      ``A_k * M_A``           (the lottery ticket itself),
* ``naive``:    ``B_k * M_A``           (the mask on a foreign init),
* ``permuted``: ``B_k * pi(M_A)``       (the mask aligned to B's basin),
* ``random``:   ``B_k * rho(M_A)``      (control: a random permutation rho of the same mask).

Every training stage is a :func:`signticket.runs.train_run` of a run description whose config
and inputs name everything upstream (seed, parent run, pruning count, ...), so finished stages are
reused and a killed pipeline resumes. This module imports the training stack; the core of
:mod:`signticket.rebasin` does not.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from signticket import data as data_lib
from signticket import lottery
from signticket.checkpoint import config_hash, run_dir, write_json_atomic
from signticket.errors import UserError
from signticket.masks import apply_mask, check_unit_interval, full_mask
from signticket.rebasin.activation_matching import activation_matching
from signticket.rebasin.apply import apply_permutation
from signticket.rebasin.perms import check_perms, invert, random_perms
from signticket.rebasin.registry import spec_for
from signticket.rebasin.resnet_specs import with_stream_sites
from signticket.rebasin.spec import Perms, PermutationSpec
from signticket.rebasin.weight_matching import weight_matching
from signticket.run_desc import Input, RunDesc
from signticket.runs import (
    DEFAULT_RUNS_ROOT,
    TRAIN_KEYS,
    build_model,
    check_run_config,
    initial_variables,
    stage_config,
    train_runs,
)
from signticket.sharding import make_mesh
from signticket.train import TrainState
from signticket.tree import LeafPredicate, PyTree, named_leaves

METHODS = ("lth", "naive", "permuted", "random")
MATCHINGS = ("weight", "activation")
REWIND_CONVENTIONS = ("exact", "official")
def _variables(state: TrainState) -> dict[str, PyTree]:
    return {"params": state.params, "batch_stats": state.batch_stats}


# -- dense runs with rewind points ---------------------------------------------------------------


def rewind_epoch(config: ConfigDict, k: int) -> int:
    """Epochs of dense training behind rewind point ``k``: ``k`` (``"exact"``) or ``k + 1``
    (``"official"``: sparse-rebasin's ``trainer`` saves ``..._epoch_{e}`` after 0-based epoch
    ``e`` and ``--rewind k`` loads ``_epoch_k``, so ``k = 0`` is *after* the first epoch)."""
    convention = config.get("rewind_convention", "exact")
    if convention not in REWIND_CONVENTIONS:
        raise UserError(f"unknown rewind_convention {convention!r}; available: "
                         f"{', '.join(REWIND_CONVENTIONS)}")
    return int(k) + (convention == "official")


@dataclasses.dataclass
class DenseRun:
    """A trained dense network and its variables at each rewind point ``k`` (see
    :func:`rewind_epoch` for how many epochs that is)."""

    directory: Path
    final: dict[str, PyTree]
    rewind: dict[int, dict[str, PyTree]]
    summary: dict[str, float]


def _rewind_file(directory: Path, epoch: int) -> Path:
    return directory / f"rewind-e{epoch:03d}.msgpack"


def _save_rewind_points(directory: Path, epochs: Sequence[int]):
    wanted = set(epochs)

    def hook(epoch: int, state: TrainState) -> TrainState:
        # Called after epoch ``epoch`` (1-based) finished: the state after exactly that many
        # epochs (the official code stores epoch k + 1 under the name k; we do not).
        if epoch in wanted:
            blob = flax.serialization.to_bytes(_variables(state))
            tmp = _rewind_file(directory, epoch).with_suffix(".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, _rewind_file(directory, epoch))
        return state

    return hook


def dense_run(config: ConfigDict, dataset: data_lib.Dataset, *, seed: int, name: str,
              runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT, progress: bool = True) -> DenseRun:
    """Dense training from init ``seed`` (data order ``seed``) for ``config.dense_epochs``,
    keeping the variables at each rewind point ``k`` in ``config.rewind_epochs``."""
    [run] = dense_runs(config, dataset, seeds=[seed], name=name, runs_root=runs_root,
                       progress=progress)
    return run


def lockstep(config: ConfigDict) -> int:
    """How many of a pipeline's runs train side by side (``experiment.lockstep``, default 1):
    bit-identical to one after another, faster for a model too small to fill the cores."""
    return int(config.get("experiment", {}).get("lockstep", 1))


def dense_runs(config: ConfigDict, dataset: data_lib.Dataset, *, seeds: Sequence[int],
               name: str, runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT,
               progress: bool = True) -> list[DenseRun]:
    """:func:`dense_run` of each of ``seeds``, side by side (:func:`lockstep`)."""
    rewinds = sorted({int(k) for k in config.rewind_epochs})
    if any(k < 0 or k >= config.dense_epochs for k in rewinds):
        raise UserError(
            f"rewind epochs {rewinds} must lie in [0, dense_epochs={config.dense_epochs}): the "
            "sparse runs train for dense_epochs - k epochs"
        )
    saved = sorted({e for k in rewinds if (e := rewind_epoch(config, k)) > 0})
    cfgs = [stage_config(config, "dense", seed=seed, optimizer=config.optimizer,
                         epochs=config.dense_epochs, data_seed=seed, save_epochs=saved)
            for seed in seeds]
    for cfg in cfgs:
        check_run_config(cfg, runs_root)  # before any directory exists
    hooks = [_save_rewind_points(run_dir(runs_root, cfg, name), saved) for cfg in cfgs]
    results = train_runs([RunDesc(cfg, name=name) for cfg in cfgs], dataset,
                         runs_root=runs_root, on_epoch_end=hooks, progress=progress,
                         lockstep=lockstep(config))
    out = []
    for cfg, res in zip(cfgs, results, strict=True):
        final = _variables(res.state)
        points = {}
        for k in rewinds:
            e = rewind_epoch(config, k)
            if e == 0:
                points[k] = initial_variables(cfg, dataset)
                continue
            path = _rewind_file(res.directory, e)
            if not path.exists():
                raise UserError(f"{path} is missing; delete {res.directory} to retrain it")
            points[k] = flax.serialization.from_bytes(final, path.read_bytes())
        out.append(DenseRun(res.directory, final, points, res.summary))
    return out


# -- iterative magnitude pruning to exact target sparsities -------------------------------------

#: ``imp.mode`` -> the :data:`signticket.lottery.ROUND_POLICIES` policy that runs it.
IMP_POLICIES = {"ft": "ft", "rewind": "weight"}
IMP_MODES = tuple(IMP_POLICIES)


def _prunable_counts(mask: PyTree, prunable: LeafPredicate) -> tuple[int, int]:
    """(pruned, total) entries over the prunable leaves (the official sparsity counts exactly
    the masked layers: ``utils.calculate_overall_sparsity_from_pth``)."""
    leaves = [np.asarray(m) for p, m in named_leaves(mask) if prunable(p)]
    total = sum(m.size for m in leaves)
    return total - int(sum(m.sum() for m in leaves)), total


@dataclasses.dataclass
class ImpResult:
    """Masks at each target sparsity, the run directory of the round each was cut from, the
    number of rounds trained and (``chain``) those rounds (:class:`signticket.lottery.Round`:
    the mask each trained under and the weights trained under it)."""

    masks: dict[float, PyTree]
    sources: dict[float, str]
    rounds: int
    chain: list = dataclasses.field(default_factory=list)


def _driver_config(config: ConfigDict, seed: int) -> ConfigDict:
    """The :func:`signticket.lottery.imp_rounds` config of this pipeline's IMP: the policy
    (``ft`` / ``weight``), ``fraction`` of the survivors per round (count rule ``round``), the
    ``imp.prune_scope`` as the driver's ``prunable`` scope, targets cut exactly; data order of
    round ``r`` is ``seed + r``."""
    imp = config.imp
    d = {"mode": IMP_POLICIES[imp.mode], "fraction": imp.fraction, "scope": "global",
         "prunable": imp.get("prune_scope", "no_head"), "count_rule": "round",
         "cut_rule": "exact"}
    if "ft_optimizer" in imp:
        d["ft_optimizer"] = imp.ft_optimizer.to_dict()
    c = {k: config[k] for k in TRAIN_KEYS if k in config}  # a complete lottery config
    c.update(seed=seed, data_seed=seed, optimizer=config.optimizer, imp=d)
    return ConfigDict(ConfigDict(c).to_dict())


def imp_masks(config: ConfigDict, dataset: data_lib.Dataset, dense: DenseRun,
              targets: Sequence[float], *, seed: int,
              runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT, progress: bool = True) -> ImpResult:
    """Global magnitude IMP on the trained ``dense`` network until every target sparsity, by the
    one IMP driver (:func:`signticket.lottery.imp_targets` over
    :func:`~signticket.lottery.imp_rounds`, with ``dense`` as round 0).

    Each round prunes ``config.imp.fraction`` of the surviving weights of the
    ``imp.prune_scope`` leaves (a :data:`signticket.lottery.PRUNING_SCOPES` name;
    ``"sparse_rebasin"``: every conv / dense kernel, head included, but projection shortcuts)
    and then trains: ``ft`` (policy ``ft``) fine-tunes the pruned weights for ``imp.ft_epochs``
    with ``imp.ft_optimizer`` (fresh optimizer and schedule each round, as ``pruning.py``);
    ``rewind`` (policy ``weight``) resets the survivors to the dense run's rewind point
    ``imp.rewind_epoch`` and trains ``T - k`` epochs with the dense optimizer. A target is cut
    exactly (``round(target * prunable)`` pruned, cut rule ``exact``) from the round that would
    pass it, and one chain serves all targets, so the rounds before a target are shared and
    reused. Round ``r`` trains on data order ``seed + r``; its run config (and directory) is laid
    out as before the driver was shared. (The official loop also fine-tunes after the final cut;
    that training does not change the mask, which is all the sparse runs take from IMP.)
    """
    imp = config.imp
    if imp.mode not in IMP_MODES:
        raise UserError(f"unknown imp.mode {imp.mode!r}; available: {', '.join(IMP_MODES)}")
    check_unit_interval("imp.fraction", imp.fraction)
    for t in targets:
        check_unit_interval("target sparsity", t)
    if imp.mode == "rewind" and imp.rewind_epoch not in dense.rewind:
        raise UserError(
            f"imp.rewind_epoch={imp.rewind_epoch} must be one of rewind_epochs "
            f"{sorted(dense.rewind)}"
        )
    lottery.pruning_scope(imp.get("prune_scope", "no_head"))  # an unknown scope fails here

    def run_config(run: lottery.RoundRun) -> ConfigDict:
        return stage_config(config, f"imp_{imp.mode}", seed=seed, optimizer=run.optimizer,
                            epochs=run.epochs, data_seed=run.data_seed, round=run.index,
                            pruned=run.pruned, **_scope_key(imp))

    params = dense.final["params"]
    round0 = lottery.Round(0, dense.directory, params, dense.final["batch_stats"],
                           full_mask(params), dense.summary)
    ft = imp.mode == "ft"
    cuts = lottery.imp_targets(
        _driver_config(config, seed), dataset, round0, targets,
        rewind=None if ft else dense.rewind[imp.rewind_epoch],
        epochs=imp.ft_epochs if ft else config.dense_epochs - imp.rewind_epoch,
        name=f"pm-imp-{imp.mode}", run_config=run_config, runs_root=runs_root,
        progress=progress,
    )
    return ImpResult(cuts.masks, {t: r.directory.name for t, r in cuts.sources.items()},
                     len(cuts.chain), cuts.chain)


def _scope_key(imp: ConfigDict) -> dict:
    # Runs under the library-default scope keep the config (and run directory) they had before
    # the scope became an option; any other scope is part of the run's identity.
    scope = imp.get("prune_scope", "no_head")
    return {} if scope == "no_head" else {"prune_scope": scope}


# -- matching -----------------------------------------------------------------------------------


def _matching_batches(config: ConfigDict, dataset, seed: int):
    """Shuffled training batches for activation matching (eval-mode forward passes).

    ``matching.batches == 0`` is one whole epoch with the last partial batch dropped and, with
    ``matching.augment``, the training augmentation (sparse-rebasin matches over its augmented
    ``train_dl``: ``act_matching_resnet20.py`` ``run_corr_matrix``, fed by ``experiment.py``
    line 108 / 141); otherwise the first ``batches`` batches, un-augmented unless ``augment``.

    A streamed dataset (anything but an in-memory :class:`~signticket.data.Dataset`, e.g.
    ImageNet) is read through its :class:`~signticket.data.Source` API and never held in
    memory: augmented batches are the first ``batches`` of the training stream (tf.data's
    crop and flip, the official ImageNet ``train_dl``), un-augmented ones a
    ``train_sample`` (resize + center crop).
    """
    if not isinstance(dataset, data_lib.Dataset):
        yield from _streamed_matching_batches(config, data_lib.as_source(dataset), seed)
        return
    m = config.matching
    idx = np.random.RandomState(seed).permutation(dataset.num_train)
    n = len(idx) // m.batch_size if m.batches == 0 else m.batches
    idx = idx[: n * m.batch_size]
    augment = bool(m.get("augment", False))
    key = jax.random.PRNGKey(seed)
    for j, i in enumerate(range(0, len(idx), m.batch_size)):
        images = jnp.asarray(dataset.train_images[idx[i : i + m.batch_size]])
        rng = jax.random.fold_in(key, j) if augment else None
        yield dataset.preprocess(images, rng, augment)


#: The stream epoch matching reads: training epochs count from 1, so epoch 0 of a run's data
#: seed is an order no training stage sees.
MATCHING_EPOCH = 0


def _streamed_matching_batches(config: ConfigDict, source: data_lib.Source, seed: int):
    m = config.matching
    full = source.num_train // m.batch_size
    n = full if m.batches == 0 else m.batches
    if not 0 < n <= full:
        raise UserError(f"matching.batches={m.batches} x batch_size={m.batch_size} needs "
                        f"{n * m.batch_size} training examples; {source.name} has "
                        f"{source.num_train}")
    if m.get("augment", False):
        batches = source.train_epoch(MATCHING_EPOCH, m.batch_size, seed, make_mesh())
        for batch in itertools.islice(batches, n):
            # tf.data already cropped and flipped; on device only the normalization is left.
            yield source.preprocess(batch["image"], None, False)
        return
    images, _ = source.train_sample(n * m.batch_size, seed)
    for i in range(0, len(images), m.batch_size):
        yield source.preprocess(jnp.asarray(images[i : i + m.batch_size]), None, False)


def permutation_spec(config: ConfigDict, variables: PyTree) -> PermutationSpec:
    """The model's permutation spec, with ``config.matching.stream_sites`` choosing a ResNet's
    residual-stream activation sites (``"all"`` or ``"sparse_rebasin"``)."""
    spec = spec_for(config.model.name, variables)
    sites = config.matching.get("stream_sites", "all")
    return spec if sites == "all" else with_stream_sites(spec, sites)


def match(config: ConfigDict, dataset: data_lib.Dataset, spec: PermutationSpec,
          reference: DenseRun, moving: DenseRun, *, seed: int,
          runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT) -> tuple[Perms, dict]:
    """``pi`` with ``pi(moving) ≈ reference`` by ``config.matching.method``; cached on disk
    under ``<runs_root>/perms`` by the two runs and the matching settings."""
    m = config.matching
    if m.method not in MATCHINGS:
        raise UserError(f"unknown matching {m.method!r}; available: {', '.join(MATCHINGS)}")
    ident = {"reference": reference.directory.name, "moving": moving.directory.name,
             "matching": m.to_dict(), "seed": seed}
    path = Path(runs_root) / "perms" / f"{m.method}-{config_hash(ident)}.npz"
    if path.exists():
        with np.load(path) as f:
            info = json.loads(str(f["__info__"]))
            perms = {p: jnp.asarray(f[p], jnp.int32) for p in f.files if p != "__info__"}
        check_perms(spec, perms)  # a stale cache of another spec fails loudly
        return perms, {**info, "id": path.stem}
    start = time.perf_counter()
    if m.method == "weight":
        perms = weight_matching(jax.random.PRNGKey(seed), spec, reference.final["params"],
                                moving.final["params"], max_iter=m.max_iter)
    else:
        model = build_model(config.model, dataset.num_classes)
        perms = activation_matching(spec, model, reference.final, moving.final,
                                    _matching_batches(config, dataset, seed))
    info = {"method": m.method, "seconds": time.perf_counter() - start,
            "moved_units": {p: int(np.sum(np.asarray(v) != np.arange(v.size)))
                            for p, v in perms.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, __info__=json.dumps(info), **{p: np.asarray(v) for p, v in perms.items()})
    os.replace(tmp, path)
    # What names runs that start from ``pi``: its cache key (the inputs that determine it),
    # never ``seconds``, which would rename them whenever the matching is computed again.
    return perms, {**info, "id": path.stem}


# -- the sparse runs -----------------------------------------------------------------------------


def sparse_init(method: str, a: DenseRun, b: DenseRun, k: int, mask: PyTree, pi: Perms,
                rho: Perms, spec: PermutationSpec) -> tuple[PyTree, PyTree, PyTree]:
    """``(params, batch_stats, mask)`` a sparse run of ``method`` starts from at rewind ``k``."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    source = a.rewind[k] if method == "lth" else b.rewind[k]
    if method == "permuted":
        mask = apply_permutation(spec, pi, mask)
    elif method == "random":
        mask = apply_permutation(spec, rho, mask)
    return apply_mask(source["params"], mask), source["batch_stats"], mask


def run_seed(config: ConfigDict, dataset: data_lib.Dataset, seed: int, *,
             runs_root: str | os.PathLike = DEFAULT_RUNS_ROOT, progress: bool = True,
             barrier_fn=None) -> dict:
    """The whole procedure for one seed; returns test accuracies of every sparse run, dense
    accuracies, matching info and (with ``barrier_fn(a_vars, b_vars, ids) -> dict``) the dense
    barriers A–B and A–pi^-1(B)."""
    exp = config.experiment
    a, b = dense_runs(config, dataset, seeds=[seed, seed + exp.seed_b_offset], name="pm-dense",
                      runs_root=runs_root, progress=progress)
    spec = permutation_spec(config, a.final)
    imp = imp_masks(config, dataset, a, exp.sparsities, seed=seed, runs_root=runs_root,
                    progress=progress)
    pi, info = match(config, dataset, spec, reference=b, moving=a, seed=seed, runs_root=runs_root)
    rho = random_perms(jax.random.PRNGKey(seed + exp.control_seed_offset), spec)
    result = {"seed": seed, "dense_a": a.summary["test_accuracy"],
              "dense_b": b.summary["test_accuracy"], "imp_rounds": imp.rounds,
              "matching": info, "sparse": {},
              # What k means and which layers the masks cover, for whoever reads the numbers.
              "rewind_convention": config.get("rewind_convention", "exact"),
              "rewind_after_epochs": {str(k): rewind_epoch(config, k) for k in a.rewind},
              "prune_scope": config.imp.get("prune_scope", "no_head")}
    if barrier_fn is not None:
        b_in_a = {c: apply_permutation(spec, invert(pi), t) for c, t in b.final.items()}
        ids = [a.directory.name, b.directory.name]
        result["barrier_ab"] = barrier_fn(a.final, b.final, ids)
        result["barrier_a_pib"] = barrier_fn(a.final, b_in_a, [*ids, info["id"]])
    for s in exp.sparsities:
        s = float(s)
        for k in config.rewind_epochs:
            k = int(k)
            descs = [_sparse_desc(config, method, seed, s, k, a, b, imp, pi, rho, spec, info)
                     for method in exp.methods]
            # One data order (the seed's) for the methods' runs: side by side they share it.
            runs = train_runs(descs, dataset, runs_root=runs_root, progress=progress,
                              lockstep=lockstep(config))
            for method, res in zip(exp.methods, runs, strict=True):
                result["sparse"].setdefault(f"{s}", {}).setdefault(f"{k}", {})[method] = (
                    res.summary["test_accuracy"])
    return result


def _sparse_desc(config: ConfigDict, method: str, seed: int, s: float, k: int, a: DenseRun,
                 b: DenseRun, imp, pi: Perms, rho: Perms, spec: PermutationSpec,
                 info: dict) -> RunDesc:
    """The sparse run of ``method`` at sparsity ``s`` from rewind point ``k``."""
    exp = config.experiment
    params, stats, mask = sparse_init(method, a, b, k, imp.masks[s], pi, rho, spec)
    cfg = stage_config(
        config, "sparse", seed=seed, optimizer=config.sparse.optimizer,
        epochs=config.dense_epochs - k, data_seed=seed, method=method,
        sparsity=s, rewind=k, rewind_after=rewind_epoch(config, k),
        mask_from=imp.sources[s],
        init_from=(a if method == "lth" else b).directory.name,
        matching=config.matching.to_dict() if method == "permuted" else "none",
        control_seed=seed + exp.control_seed_offset if method == "random" else -1,
    )
    source = f"sparse_init({method}, {cfg.init_from} at rewind {k}"
    mask_source = f"cut({imp.sources[s]}, {s})" + {
        "permuted": f" permuted by {info['id']}",
        "random": f" permuted at random (seed {cfg.control_seed})"}.get(method, "")
    return RunDesc(cfg, name=f"pm-sparse-{method}",
                   init_params=Input(params, f"{source}) * {mask_source}"),
                   init_batch_stats=Input(stats, f"{source})"),
                   mask=Input(mask, mask_source))


def save_result(path: Path, result: dict) -> None:
    """Atomic JSON write of one seed's result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
