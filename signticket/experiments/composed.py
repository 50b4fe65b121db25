"""Composed methods: AWS, permuted lottery-ticket masks and Sign-In combined (no single paper
does these). Masks, signs, permutations and params are pytrees and Sign-In is an optax
transform, so each composition is a few lines over the library's pieces:

1. **AWS sign transfer + Sign-In.** The AWS pruning stage (``lottery.imp`` with ``aws=True``)
   gives its last round: a mask and the weights trained under it (signs); the sign-transfer
   ticket on a fresh init
   (``lottery.transfer_init("sign_transfer", ...)``) is trained with the final schedule by
   (1a) masked SGD, as ``lottery.final_run`` does, and (1b) Sign-In over the same SGD.
2. **Permuted LTH mask + Sign-In from init B.** From the permuted-masks procedure
   (``signticket.rebasin.procedure``: dense A and B, IMP on A, weight matching ``pi`` with
   ``pi(A) ≈ B``), the permuted mask on B's rewind point ``B_k ⊙ pi(M_A)`` is trained by (2a)
   masked SGD (the paper's "permuted") and (2b) Sign-In.
3. **Permuted mask + A's signs carried into B's basin.** ``|B_k| ⊙ sign(pi(A_T)) ⊙ pi(M_A)``:
   B's magnitudes at its rewind point, the signs of A's *trained* dense weights ``A_T``
   permuted into B's basis (the weights the matching aligned and IMP started from; A's
   rewound weights mostly still carry init signs), on the permuted mask; vs the permuted mask
   alone (2a). Controls: the naive mask ``B_k ⊙ M_A`` and the naive mask with A's unpermuted
   signs ``|B_k| ⊙ sign(A_T) ⊙ M_A``; optional arms: the lottery ticket ``A_k ⊙ M_A`` and
   composition 3 + Sign-In.

    python -m signticket.experiments.composed \
        --config signticket/experiments/configs/composed_cpu.py [--config.key=value ...]

Per seed every arm of a group shares its init magnitudes, mask and data order, so differences
to its baseline arm are paired. Every training run is a resumable config-hashed
``runs.train_run`` whose config names its arm and everything upstream (finished runs are
reused, killed runs resume). Writes ``table.md``/``.csv``, ``results.json`` and
``accuracy.png`` to ``--out`` (default ``results/composed/<config name>``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from signticket import data as data_lib
from signticket import lottery
from signticket.errors import UserError
from signticket.experiments.cli_common import experiment_main
from signticket.experiments.common import progress_lines, pyplot, run_seeds, save_figure
from signticket.experiments.sign_in import make_tx
from signticket.experiments.tables import mean_std, paired_differences, wins, write_table
from signticket.rebasin import (
    Perms,
    PermutationSpec,
    apply_permutation,
    identity_perms,
    procedure,
    spec_for,
)
from signticket.run_desc import Input, RunDesc
from signticket.runs import initial_variables, load_dataset, stage_config, train_run
from signticket.signs import sign_flips, sign_transfer
from signticket.tree import PyTree, is_kernel

NAME = "composed"
TITLE = "Composed methods"

#: Top-level keys shared by the AWS pipeline, the permuted-mask pipeline and every arm
#: (``logging``, where present, chooses metric writers and names no run).
SHARED_KEYS = ("model", "data", "batch_size", "eval_every", "checkpoint_every",
               "checkpoint_min_interval_s", "logging")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One row of the table: which pipeline it needs, how its start is built, whether it is
    trained with Sign-In, and the arm its paired difference is taken against."""

    group: str  # "aws" or "permuted"
    init: str  # "sign_transfer" (AWS) or a permuted-procedure method, optionally + "_signs"
    sign_in: bool
    baseline: str | None
    label: str


ARMS: dict[str, Arm] = {
    "aws_st": Arm("aws", "sign_transfer", False, None,
                  "1a: AWS sign transfer, masked SGD"),
    "aws_st_sign_in": Arm("aws", "sign_transfer", True, "aws_st",
                          "1b: AWS sign transfer + Sign-In"),
    "lth": Arm("permuted", "lth", False, None, "LTH A_k ⊙ M_A (reference)"),
    "naive": Arm("permuted", "naive", False, None, "naive B_k ⊙ M_A"),
    "naive_signs": Arm("permuted", "naive_signs", False, "naive",
                       "naive + A's signs abs(B_k) sign(A_T) ⊙ M_A"),
    "permuted": Arm("permuted", "permuted", False, "naive", "2a: permuted B_k ⊙ π(M_A)"),
    "permuted_sign_in": Arm("permuted", "permuted", True, "permuted",
                            "2b: permuted + Sign-In"),
    "permuted_signs": Arm("permuted", "permuted_signs", False, "permuted",
                          "3: permuted + π(A)'s signs abs(B_k) sign(π(A_T)) ⊙ π(M_A)"),
    "permuted_signs_sign_in": Arm("permuted", "permuted_signs", True, "permuted_signs",
                                  "3 + Sign-In"),
}


def _check_arms(arms: Sequence[str]) -> None:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise UserError(f"unknown arm(s) {unknown} in experiment.arms; available: "
                         f"{', '.join(ARMS)}")


def _shared(config: ConfigDict) -> ConfigDict:
    return ConfigDict({k: ConfigDict(config[k].to_dict()) if isinstance(config[k], ConfigDict)
                       else config[k] for k in SHARED_KEYS if k in config})


# -- configs of the upstream pipelines and of the arms -------------------------------------------


def aws_config(config: ConfigDict, seed: int) -> ConfigDict:
    """The ``lottery.imp`` config of the AWS pruning stage for ``seed`` (init and data order
    ``seed``, as ``signticket.experiments.aws`` builds it)."""
    c = _shared(config)
    c.seed, c.data_seed, c.aws = seed, seed, True
    c.optimizer = ConfigDict(config.aws.optimizer.to_dict())
    c.imp = ConfigDict(config.aws.imp.to_dict())
    c.final = ConfigDict(config.aws.final.to_dict())
    return ConfigDict(c.to_dict())


def permuted_config(config: ConfigDict) -> ConfigDict:
    """The config ``signticket.rebasin.procedure`` reads (dense runs, IMP, matching), with the
    one rewind point ``k = permuted.rewind_epoch``."""
    p = config.permuted
    c = _shared(config)
    c.optimizer = ConfigDict(p.optimizer.to_dict())
    c.dense_epochs = p.dense_epochs
    c.rewind_epochs = (int(p.rewind_epoch),)
    c.imp = ConfigDict(p.imp.to_dict())
    c.matching = ConfigDict(p.matching.to_dict())
    return ConfigDict(c.to_dict())


def arm_config(config: ConfigDict, arm: str, *, seed: int, init_seed: int, epochs: int,
               optimizer: ConfigDict, **provenance) -> ConfigDict:
    """The run config of one arm: its name, the Sign-In settings it uses (None where it does
    not, so unused settings do not split run directories) and every upstream run it starts
    from (``provenance``), so its hash names it uniquely."""
    s = config.sign_in
    on = ARMS[arm].sign_in
    method = {"sign_in": on, "c": s.c if on else None,
              "reset_epochs": s.reset_epochs if on else None,
              "reset_momentum": s.reset_momentum if on and s.reset_epochs else None,
              "mw_decay_scale": s.mw_decay_scale if on else None}
    if on and optimizer.name != "sgd":
        raise UserError(f"arm {arm!r}: Sign-In is built over SGD "
                        f"(experiments.sign_in.make_tx); got optimizer {optimizer.name!r}")
    return stage_config(config, "composed", seed=init_seed, optimizer=optimizer, epochs=epochs,
                        data_seed=seed, arm=arm, method=ConfigDict(method), **provenance)


# -- training one arm ----------------------------------------------------------------------------


def masked_nonzero(params: PyTree, mask: PyTree) -> int:
    """How many entries the mask prunes are not exactly zero (0 for a correctly masked run)."""
    counts = jax.tree.map(lambda p, m: jnp.sum(jnp.logical_and(~jnp.asarray(m, bool), p != 0)),
                          params, mask)
    return int(sum(int(c) for c in jax.tree.leaves(counts)))


def train_arm(cfg: ConfigDict, dataset: data_lib.Dataset, params: PyTree, batch_stats: PyTree,
              mask: PyTree, *, runs_root: str | Path, progress: bool) -> dict:
    """Train one arm from ``params`` (already masked) under ``mask``; its accuracy, run
    directory, the fraction of unmasked kernel signs that changed in training, and how many
    pruned entries ended non-zero."""
    steps = data_lib.steps_per_epoch(len(dataset.train_labels), cfg.batch_size)
    # Without Sign-In make_tx is build_optimizer's masked SGD, exactly what train_run's cached
    # engine builds: tx=None shares that engine's compiled step across seeds and arms.
    tx = make_tx(cfg, steps) if cfg.method.sign_in else None
    # The arm's config names where its start comes from (``arm_config``'s provenance keys).
    recipe = f"start of arm {cfg.arm} from the runs its config names"
    desc = RunDesc(cfg, name=f"composed-{cfg.arm}", init_params=Input(params, recipe),
                   init_batch_stats=Input(batch_stats, recipe), mask=Input(mask, recipe),
                   tx=None if tx is None else Input(tx, "make_tx of the arm's config"))
    res = train_run(desc, dataset, runs_root=runs_root, progress=progress)
    return {"test_accuracy": float(res.summary["test_accuracy"]), "dir": str(res.directory),
            # over every kernel, the dense head included (as experiments.sign_in counts them)
            "flips_in_training": float(sign_flips(params, res.state.params, mask,
                                                  where=is_kernel).overall),
            "masked_nonzero": masked_nonzero(res.state.params, mask)}


# -- composition 1: the AWS ticket ---------------------------------------------------------------


def aws_arms(config: ConfigDict, dataset: data_lib.Dataset, seed: int, arms: Sequence[str], *,
             runs_root: str | Path, progress: bool) -> tuple[dict, dict]:
    """AWS pruning for ``seed``, then the sign-transfer ticket of its last round (its mask and
    the signs of the weights trained under it) trained by each of ``arms``; returns (pipeline
    info, {arm: result})."""
    acfg = aws_config(config, seed)
    rounds = lottery.imp(acfg, dataset, runs_root=runs_root, progress=progress)
    src = rounds[-1]
    info = {"round": src.index, "remaining": src.remaining,
            # the last round's network, trained under its own mask (at ``remaining``)
            "imp_accuracy": float(src.summary["test_accuracy"])}
    results = {}
    for arm in arms:
        cfg = arm_config(config, arm, seed=seed, init_seed=seed + config.aws.transfer_seed,
                         epochs=config.aws.final.epochs, optimizer=config.aws.final.optimizer,
                         source=src.directory.name)
        fresh = initial_variables(cfg, dataset)
        params, stats, mask = lottery.transfer_init(ARMS[arm].init, src, fresh)
        results[arm] = {
            **train_arm(cfg, dataset, params, stats, mask, runs_root=runs_root,
                        progress=progress),
            "signs_changed": float(sign_flips(fresh["params"], params, mask,
                                              where=is_kernel).overall)}
    return info, results


# -- compositions 2 and 3: the permuted mask -----------------------------------------------------


@dataclasses.dataclass
class PermutedSetup:
    """What the sparse runs of the permuted-mask procedure start from, for one seed."""

    a: procedure.DenseRun
    b: procedure.DenseRun
    k: int
    sparsity: float
    mask: PyTree  # M_A, A's IMP mask
    mask_source: str
    pi: Perms  # pi(A) ≈ B
    spec: PermutationSpec
    info: dict


def permuted_setup(config: ConfigDict, dataset: data_lib.Dataset, seed: int, *,
                   runs_root: str | Path, progress: bool) -> PermutedSetup:
    """Dense A (init ``seed``) and B (``seed + seed_b_offset``), IMP on A to the target
    sparsity and the weight matching, all through the procedure's cached runs."""
    pcfg, p = permuted_config(config), config.permuted
    kw = dict(runs_root=runs_root, progress=progress)
    a = procedure.dense_run(pcfg, dataset, seed=seed, name="pm-dense", **kw)
    b = procedure.dense_run(pcfg, dataset, seed=seed + p.seed_b_offset, name="pm-dense", **kw)
    spec = spec_for(config.model.name, a.final)
    s = float(p.sparsity)
    imp = procedure.imp_masks(pcfg, dataset, a, (s,), seed=seed, **kw)
    pi, match_info = procedure.match(pcfg, dataset, spec, reference=b, moving=a, seed=seed,
                                     runs_root=runs_root)
    info = {"dense_a": float(a.summary["test_accuracy"]),
            "dense_b": float(b.summary["test_accuracy"]), "imp_rounds": imp.rounds,
            "sparsity": s, "k": int(p.rewind_epoch), "matching": match_info}
    return PermutedSetup(a, b, int(p.rewind_epoch), s, imp.masks[s], imp.sources[s], pi, spec,
                         info)


def permuted_init(kind: str, setup: PermutedSetup) -> tuple[PyTree, PyTree, PyTree]:
    """``(params, batch_stats, mask)`` of a permuted-group arm: a procedure method (``lth``,
    ``naive``, ``permuted``), and for ``<method>_signs`` its kernels, biases and head given the
    signs of A's trained weights (permuted by pi for ``permuted_signs``) with B_k's magnitudes."""
    s = setup
    base = kind.removesuffix("_signs")
    # rho (the random-permutation control) is unused by these methods
    params, stats, mask = procedure.sparse_init(base, s.a, s.b, s.k, s.mask, s.pi,
                                                identity_perms(s.spec), s.spec)
    if kind.endswith("_signs"):
        if base not in ("naive", "permuted"):
            raise UserError(f"no sign-transfer variant of {base!r}")
        donor = s.a.final["params"]
        if base == "permuted":
            donor = apply_permutation(s.spec, s.pi, donor)  # A_T in B's basis
        params = sign_transfer(s.b.rewind[s.k]["params"], donor, mask)
    return params, stats, mask


def permuted_arms(config: ConfigDict, dataset: data_lib.Dataset, seed: int,
                  arms: Sequence[str], *, runs_root: str | Path, progress: bool
                  ) -> tuple[dict, dict]:
    """The permuted-mask pipeline for ``seed`` and each of ``arms`` trained from its start for
    the remaining ``dense_epochs - k`` epochs; returns (pipeline info, {arm: result})."""
    setup = permuted_setup(config, dataset, seed, runs_root=runs_root, progress=progress)
    p = config.permuted
    results = {}
    for arm in arms:
        kind = ARMS[arm].init
        params, stats, mask = permuted_init(kind, setup)
        start = setup.a if kind == "lth" else setup.b
        cfg = arm_config(
            config, arm, seed=seed, init_seed=seed, epochs=p.dense_epochs - setup.k,
            optimizer=p.sparse.optimizer, init_from=start.directory.name, rewind=setup.k,
            sparsity=setup.sparsity, mask_from=setup.mask_source,
            matching=p.matching.to_dict() if kind.startswith("permuted") else "none",
            sign_donor=setup.a.directory.name if kind.endswith("_signs") else "none")
        unsigned = start.rewind[setup.k]["params"]
        results[arm] = {
            **train_arm(cfg, dataset, params, stats, mask, runs_root=runs_root,
                        progress=progress),
            "signs_changed": float(sign_flips(unsigned, params, mask, where=is_kernel).overall)}
    return setup.info, results


# -- the experiment ------------------------------------------------------------------------------


def run_seed(config: ConfigDict, dataset: data_lib.Dataset, seed: int, *,
             runs_root: str | Path, progress: bool) -> dict:
    """Every requested arm for one seed (a group's pipeline runs only if one of its arms is
    requested)."""
    arms = list(config.experiment.arms)
    _check_arms(arms)
    result: dict = {"seed": seed, "arms": {}}
    for group, fn in (("aws", aws_arms), ("permuted", permuted_arms)):
        chosen = [a for a in arms if ARMS[a].group == group]
        if chosen:
            info, res = fn(config, dataset, seed, chosen, runs_root=runs_root, progress=progress)
            result[group] = info
            result["arms"].update(res)
    return result


def describe_seed(seed: int, result: dict) -> str:
    """One line per arm of a finished seed."""
    return "\n".join(f"seed {seed} {arm}: acc {r['test_accuracy']:.4f}"
                     for arm, r in result["arms"].items())


def run(config: ConfigDict, args, out: Path) -> list[dict]:
    _check_arms(list(config.experiment.arms))  # fail before loading data
    dataset = load_dataset(config.data, args.data_dir)
    return run_seeds(config.experiment.seeds, lambda seed: run_seed(
        config, dataset, seed, runs_root=args.runs_root, progress=not args.no_progress),
        describe=describe_seed, announce=progress_lines(args.no_progress))


def accuracies(results: list[dict], arm: str) -> dict[int, float]:
    """``{seed: test accuracy}`` of one arm over the seeds that ran it."""
    return {r["seed"]: r["arms"][arm]["test_accuracy"] for r in results if arm in r["arms"]}


def _arm_rows(config: ConfigDict, results: list[dict]) -> list[tuple[str, list, dict]]:
    """(arm, accuracies, {seed: paired difference to its baseline}) in table order."""
    rows = []
    for arm in (a for a in ARMS if a in list(config.experiment.arms)):
        accs, base = accuracies(results, arm), ARMS[arm].baseline
        deltas = {} if base is None else paired_differences(accs, accuracies(results, base))
        rows.append((arm, list(accs.values()), deltas))
    return rows


def make_table(config: ConfigDict, results: list[dict], out: Path, title: str) -> str:
    header = ["arm", "test acc (%)", "paired vs", "Δ (points)", "seeds with Δ > 0",
              "signs set by transfer (% changed)", "signs flipped in training (%)"]
    rows = []
    for arm, accs, deltas in _arm_rows(config, results):
        rs = [r["arms"][arm] for r in results if arm in r["arms"]]
        transfer = "sign" in ARMS[arm].init
        rows.append([ARMS[arm].label, mean_std(accs, 100),
                     ARMS[arm].baseline or "—",
                     mean_std(list(deltas.values()), 100) if deltas else "—",
                     wins(deltas.values()),
                     mean_std([r["signs_changed"] for r in rs], 100, 1) if transfer else "—",
                     mean_std([r["flips_in_training"] for r in rs], 100, 1)])
    return write_table(out / "table", header, rows, title=title,
                       notes=table_notes(config, results))


def table_notes(config: ConfigDict, results: list[dict]) -> str:
    """What the numbers are and the recipe of each pipeline that ran for every seed."""
    notes = [f"Test accuracy (%), mean ± std over seeds {[r['seed'] for r in results]}; Δ: "
             f"paired per seed (same init magnitudes, mask and data order), in points. "
             f"{config.model.name} {dict(config.model.kwargs)} on {config.data.name} (train "
             f"subset {config.data.train_subset or 'all'}, test subset "
             f"{config.data.test_subset or 'all'}), batch {config.batch_size}. Sign-In: "
             f"c = {config.sign_in.c}, scaling reset every {config.sign_in.reset_epochs} "
             f"epoch(s), over the same SGD and schedule as its baseline."]
    if all("aws" in r for r in results):
        a, imp = config.aws, config.aws.imp
        remaining = mean_std([r["aws"]["remaining"] for r in results], 100)
        imp_acc = mean_std([r["aws"]["imp_accuracy"] for r in results], 100)
        notes.append(
            f"AWS: {imp.mode}-LR IMP with norm interpolation, {imp.warmup_epochs} warm-up + "
            f"{imp.rounds} rounds x {imp.epochs_per_round} epoch(s) pruning {imp.fraction:.0%} "
            f"per round ({imp.scope}) → {remaining} % remaining; last-round network "
            f"{imp_acc} %. Tickets "
            f"on a fresh init (seed + {a.transfer_seed}), trained {a.final.epochs} epochs "
            f"({a.final.optimizer.schedule} lr {a.final.optimizer.learning_rate}).")
    if all("permuted" in r for r in results):
        p = config.permuted
        notes.append(
            f"Permuted: dense A / B {p.dense_epochs} epochs "
            f"({mean_std([r['permuted']['dense_a'] for r in results], 100)} / "
            f"{mean_std([r['permuted']['dense_b'] for r in results], 100)} %), IMP-"
            f"{p.imp.mode} on A to {p.sparsity:.0%} sparse ({p.imp.fraction:.0%}/round), "
            f"{p.matching.method} matching π(A) ≈ B; sparse runs from epoch k = "
            f"{p.rewind_epoch} for {p.dense_epochs - p.rewind_epoch} epochs. Sign donor: A's "
            f"trained dense weights A_T (the ones the matching aligned); signs go on kernels, "
            f"biases and the head, norm params stay B_k's.")
    notes.append("'signs set by transfer': unmasked kernel entries whose sign the transfer "
                 "changed vs the init it keeps the magnitudes of (fresh init / B_k); 'flipped "
                 "in training': unmasked kernel entries whose sign differs between the start "
                 "and the end of training.")
    return "\n\n".join(notes)


def plot_arms(config: ConfigDict, results: list[dict], out: Path) -> Path:
    """Accuracy per arm (bar: mean, dots: seeds) and the paired difference to its baseline."""
    rows = _arm_rows(config, results)
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(rows))
    colors = ["tab:red" if ARMS[a].group == "aws" else "tab:blue" for a, _, _ in rows]
    rng = np.random.RandomState(0)  # jitter so equal dots stay visible
    for i, (_, accs, deltas) in enumerate(rows):
        axes[0].bar(i, 100 * np.mean(accs), color=colors[i], alpha=0.5)
        axes[0].scatter(i + rng.uniform(-0.15, 0.15, len(accs)), 100 * np.asarray(accs),
                        color="k", s=12, zorder=3)
        if deltas:
            d = 100 * np.asarray(list(deltas.values()))
            axes[1].bar(i, d.mean(), color=colors[i], alpha=0.5)
            axes[1].scatter(i + rng.uniform(-0.15, 0.15, d.size), d, color="k", s=12, zorder=3)
    lo = min(100 * min(accs) for _, accs, _ in rows)
    axes[0].set_ylim(max(0.0, lo - 5), None)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].axhline(0, color="gray", lw=0.8)
    axes[1].set_ylabel("Δ vs baseline arm (points, paired)")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels([a for a, _, _ in rows], rotation=35, ha="right", fontsize=8)
    fig.suptitle("Composed methods (red: AWS ticket, blue: permuted-mask group)")
    return save_figure(fig, out / "accuracy.png")


def report(config: ConfigDict, results: list[dict], out: Path, title: str
           ) -> tuple[str, list[Path]]:
    return make_table(config, results, out, title), [plot_arms(config, results, out)]


def training_epochs(config: ConfigDict) -> float:
    """Epochs of training the whole experiment runs (for cost estimates)."""
    arms = list(config.experiment.arms)
    n = {g: sum(ARMS[a].group == g for a in arms if a in ARMS) for g in ("aws", "permuted")}
    epochs = 0.0
    if n["aws"]:
        imp = config.aws.imp
        epochs += (imp.warmup_epochs + imp.rounds * imp.epochs_per_round
                   + n["aws"] * config.aws.final.epochs)
    if n["permuted"]:
        p = config.permuted
        rounds = math.ceil(math.log(1 - p.sparsity) / math.log(1 - p.imp.fraction))
        epochs += (2 * p.dense_epochs + rounds * p.imp.ft_epochs
                   + n["permuted"] * (p.dense_epochs - p.rewind_epoch))
    return len(config.experiment.seeds) * epochs


def main(argv: Sequence[str] | None = None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
