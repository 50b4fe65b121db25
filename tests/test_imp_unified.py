"""One IMP driver: ``rebasin.procedure.imp_masks`` is a thin caller of ``lottery.imp_rounds`` and
gives exactly what the permuted pipeline's own IMP loop gave before the unification.

``_reference_imp_masks`` is that loop, kept verbatim (only made self-contained) as the spec. Both
build their masks from the same trained dense run on a tiny synthetic dataset, for IMP-FT and
IMP-rewind, the official scope (``sparse_rebasin``, head pruned) and the library default
(``no_head``), several targets sharing one chain. They must agree on every mask, the round
each target was cut from, the number of rounds, the fine-tuned weights of every round and each
round's run config; the driver's rounds name their parent run in their inputs' sources
(``signticket.run_desc``), which the pre-unification loop did through its config.
"""

import chex
import numpy as np
import pytest
from conftest import synthetic_dataset
from ml_collections import ConfigDict

from signticket import lottery
from signticket.experiments.configs.permuted_common import base, imp_ft_sgd, sgd
from signticket.masks import apply_mask, full_mask, magnitude_prune
from signticket.rebasin import procedure as proc
from signticket.rebasin.prune_scope import sparse_rebasin_prunable
from signticket.run_desc import Input, RunDesc
from signticket.runs import train_run
from signticket.tree import is_prunable, named_leaves

_SCOPES = {"sparse_rebasin": sparse_rebasin_prunable, "no_head": is_prunable}


def _counts(mask, prunable):
    leaves = [np.asarray(m) for p, m in named_leaves(mask) if prunable(p)]
    total = sum(m.size for m in leaves)
    return total - int(sum(m.sum() for m in leaves)), total


def _prune_count(params, mask, n, prunable):
    pruned, total = _counts(mask, prunable)
    return magnitude_prune(params, mask, n / (total - pruned), "global", prunable=prunable,
                           keep_dense=())


def _reference_imp_masks(config, dataset, dense, targets, *, seed, runs_root):
    """``procedure.imp_masks`` as of commit 4ca6c83 (before the unification); returns
    ``(masks, sources, rounds, trained)`` with every round's trained params."""
    imp = config.imp
    prunable = _SCOPES[imp.get("prune_scope", "no_head")]
    params, stats = dense.final["params"], dense.final["batch_stats"]
    mask = full_mask(params)
    parent = dense.directory.name
    pending = sorted(set(float(t) for t in targets))
    out_masks, sources, trained = {}, {}, []
    r = 0
    while pending:
        pruned, total = _counts(mask, prunable)
        step = round(imp.fraction * (total - pruned))
        for t in list(pending):
            need = round(t * total) - pruned
            if need <= step:
                out_masks[t] = _prune_count(params, mask, need, prunable) if need > 0 else mask
                sources[t] = parent
                pending.remove(t)
        if not pending:
            break
        r += 1
        mask = _prune_count(params, mask, step, prunable)
        if imp.mode == "ft":
            start, start_stats = apply_mask(params, mask), stats
            optimizer, epochs = imp.ft_optimizer, imp.ft_epochs
        else:
            rewind = dense.rewind[imp.rewind_epoch]
            start, start_stats = apply_mask(rewind["params"], mask), rewind["batch_stats"]
            optimizer, epochs = config.optimizer, config.dense_epochs - imp.rewind_epoch
        scope = imp.get("prune_scope", "no_head")
        cfg = proc.stage_config(config, f"imp_{imp.mode}", seed=seed, optimizer=optimizer,
                                epochs=epochs, data_seed=seed + r, parent=parent, round=r,
                                pruned=pruned + step,
                                **({} if scope == "no_head" else {"prune_scope": scope}))
        desc = RunDesc(cfg, name=f"pm-imp-{imp.mode}-r{r:02d}",
                       init_params=Input(start, f"reference loop from {parent}"),
                       init_batch_stats=Input(start_stats, f"reference loop from {parent}"),
                       mask=Input(mask, f"reference loop from {parent}"))
        res = train_run(desc, dataset, runs_root=runs_root, progress=False)
        params, stats, parent = res.state.params, res.state.batch_stats, res.directory.name
        trained.append(params)
    return out_masks, sources, r, trained


def _config(**imp):
    c = base(model="mlp", model_kwargs={"widths": (8, 8)}, dataset="synthetic",
             optimizer=sgd(0.05, 5e-4), dense_epochs=2, rewind_epochs=(0, 1),
             ft_optimizer=imp_ft_sgd(0.01, 1), ft_epochs=1, sparse_optimizer=sgd(0.05, 5e-4),
             sparsities=(0.6, 0.9), seeds=(0,), batch_size=16)
    c.imp.fraction = 0.5  # rounds at 0.5, 0.75, 0.875; 0.9 is cut from round 3
    c.imp.update(imp)
    return c


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    ds = synthetic_dataset(n=64, n_test=32)
    run = proc.dense_run(_config(), ds, seed=3, name="pm-dense", runs_root=root, progress=False)
    return ds, run


@pytest.mark.parametrize("imp", [
    {"mode": "ft", "prune_scope": "sparse_rebasin"},
    {"mode": "ft", "prune_scope": "no_head"},
    {"mode": "rewind", "prune_scope": "sparse_rebasin", "rewind_epoch": 1},
    {"mode": "ft", "prune_scope": "sparse_rebasin", "fraction": 0.2},
], ids=["ft-official", "ft-no_head", "rewind-official", "ft-fraction0.2"])
def test_imp_masks_reproduce_the_pre_unification_loop(dense, tmp_path, imp):
    ds, run = dense
    config = _config(**imp)
    targets = (0.9, 0.6, 0.0) if imp.get("fraction") is None else (0.5,)
    want_masks, want_sources, want_rounds, want_params = _reference_imp_masks(
        config, ds, run, targets, seed=3, runs_root=tmp_path / "old")
    got = proc.imp_masks(config, ds, run, targets, seed=3, runs_root=tmp_path / "new",
                         progress=False)
    assert got.rounds == want_rounds > 0
    chex.assert_trees_all_equal(got.masks, want_masks)
    # Every round trained to the same weights under the same mask ...
    chex.assert_trees_all_equal([r.params for r in got.chain], want_params)
    # ... from runs with the same config (the identity minus the inputs' sources, which now
    # name each round's parent run) ...
    configs = {}
    for root in ("old", "new"):
        runs = sorted((p for p in (tmp_path / root).iterdir() if p.name.startswith("pm-imp")),
                      key=lambda p: _identity(p)["round"])
        configs[root] = [_identity(p) for p in runs]
    assert len(configs["new"]) == want_rounds
    # (the reference loop's config named its parent: the driver's inputs do that now)
    def hyperparameters(c):
        return {k: v for k, v in c.items() if k not in ("inputs", "parent")}

    assert [hyperparameters(c) for c in configs["new"]] == [
        hyperparameters(c) for c in configs["old"]]
    assert all("parent" in c for c in configs["old"])
    # ... each naming its parent run: round r's inputs come from round r - 1's directory.
    parents = [run.directory.name, *[r.directory.name for r in got.chain[:-1]]]
    for c, parent in zip(configs["new"], parents, strict=True):
        assert all(parent in source for source in c["inputs"].values())
    # The cuts come from the same rounds.
    def round_of(directory):
        return _identity(directory).get("round", 0)  # the dense run is round 0

    assert {t: round_of(tmp_path / "new" / name) for t, name in got.sources.items()
            if name.startswith("pm-imp")} == {
        t: round_of(tmp_path / "old" / name) for t, name in want_sources.items()
        if name.startswith("pm-imp")}
    assert {t for t, n in got.sources.items() if n == run.directory.name} == {
        t for t, n in want_sources.items() if n == run.directory.name}


def _identity(directory):
    import json

    from signticket.provenance import PROVENANCE_KEY

    c = json.loads((directory / "config.json").read_text())
    c.pop(PROVENANCE_KEY, None)
    return c


def test_exact_cut_is_a_registered_count_rule_and_scopes_are_lottery_scopes():
    assert lottery.PRUNING_SCOPES["sparse_rebasin"] is sparse_rebasin_prunable
    assert lottery.PRUNING_SCOPES["no_head"] is is_prunable
    assert lottery.kept_at_sparsity(1000, 0.9) == 100
    assert lottery.kept_at_sparsity(7, 0.5) == 7 - round(3.5)
    assert lottery.CUT_RULES["exact"] is lottery.kept_at_sparsity
    assert isinstance(_config().imp, ConfigDict)


def test_a_scope_with_the_head_prunes_it_and_removes_exactly_the_counted_weights():
    """The scope's predicate alone decides (``keep_dense=()``): ``kernels`` and ``sparse_rebasin``
    prune the head and remove exactly what the count rule says over the scope they count."""
    import jax

    from signticket import models

    model = models.get("mlp", 10, widths=(8, 8))
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1)))["params"]
    full = full_mask(params)
    for name in ("kernels", "sparse_rebasin", "kernels_except_head", "no_head"):
        pred = lottery.PRUNING_SCOPES[name]
        n = sum(int(np.size(m)) for p, m in named_leaves(full) if pred(p))
        mask = lottery.prune_round(params, full, 0.3, prunable=name)
        kept = sum(int(np.sum(m)) for p, m in named_leaves(mask) if pred(p))
        assert kept == n - round(0.3 * n)
        head_pruned = not bool(np.all(mask["head"]["kernel"]))
        assert head_pruned == (name in ("kernels", "sparse_rebasin"))
    with pytest.raises(ValueError, match="unknown pruning scope 'everything'"):
        lottery.pruning_scope("everything")


def test_imp_targets_with_too_few_rounds_names_the_problem(dense, tmp_path):
    ds, run = dense
    config = proc._driver_config(_config(), seed=3)
    config.imp.rounds = 1
    params = run.final["params"]
    round0 = lottery.Round(0, run.directory, params, run.final["batch_stats"],
                           full_mask(params), run.summary)
    with pytest.raises(ValueError, match=r"imp.rounds=1 ran out before target sparsities \[0.9\]"):
        lottery.imp_targets(config, ds, round0, (0.5, 0.9), epochs=1, runs_root=tmp_path,
                            progress=False)
