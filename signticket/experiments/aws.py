"""AWS ("Find A Winning Sign", Oh, Baik, Lee, ICLR 2025): sign transfer vs retrain vs mask
transfer, with error barriers.

    python -m signticket.experiments.aws --config signticket/experiments/configs/aws_cpu.py \
        [--config.key=value ...]

For every seed, LRR and AWS prune from the same init and data order. Round k is trained under
its own mask (the official ``checkpoint_iter{k}``); from it the network is retrained, its mask
and signs are transferred to two fresh inits, and its mask alone to one; a dense baseline uses
the final schedule. As in the official scripts, the final runs of transfer seed ``s`` use data
order ``s`` (retrain, sign and mask transfer share it), so the two sign transfers differ in init
*and* data order. Barriers: (i) the norm-parameter path from trained psi to psi_init, (ii) sign
transfer vs retrain, (iii) two sign transfers; reported with the official AWS definition
(``lmc.error_barrier_midpoint_mean``) and BN re-estimation (``bn_mode="ema"``), the
over-the-chord value beside it. Every training run is a resumable config-hashed run; barriers are
cached. Writes ``table.md``/``.csv``, ``results.json`` and barrier-curve figures to ``--out``.
See ``docs/protocols/aws.md``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from signticket import lmc, lottery
from signticket.experiments.cli_common import experiment_main
from signticket.experiments.common import (
    cached_barrier,
    curve_record,
    pyplot,
    run_seeds,
    save_figure,
)
from signticket.experiments.tables import (
    mean_std,
    paper_columns,
    per_seed_mean,
    pooled,
    write_table,
)
from signticket.runs import (
    build_model,
    initial_variables,
    load_dataset,
)
from signticket.tree import is_norm, select

NAME = "aws"
TITLE = "AWS"
METHODS = ("lrr", "aws")


def _seeded(config: ConfigDict, seed: int, method: str) -> ConfigDict:
    c = ConfigDict(config.to_dict())
    del c["experiment"]
    c.seed, c.data_seed, c.aws = seed, seed, method == "aws"
    return c


def _variables(run) -> dict:
    return {"params": run.state.params, "batch_stats": run.state.batch_stats}


def barrier_record(curve, definition: str) -> dict:
    """:func:`~signticket.experiments.common.curve_record` with the error and loss barriers of
    ``definition`` (``lmc.BARRIERS``; the official one is ``midpoint_mean``) and both
    definitions' error barriers beside them, so either can be reported from the cache."""
    error_fn, loss_fn = lmc.BARRIERS[definition]
    return {**curve_record(curve), "definition": definition,
            "error_barrier": float(error_fn(curve)), "loss_barrier": float(loss_fn(curve)),
            "error_barrier_over_chord": float(lmc.error_barrier_over_chord(curve)),
            "error_barrier_midpoint_mean": float(lmc.error_barrier_midpoint_mean(curve))}


def make_barrier_fn(config: ConfigDict, model, dataset, runs_root):
    """``(prefix, a, b, ids, mask=None) -> barrier dict``: cached barrier curves between
    variables ``a`` and ``b`` (``ids`` name them for the cache) with the experiment's BN
    re-estimation (``bn_mode``, ``bn_batch_size``) and barrier definition."""
    exp = config.experiment
    options = {"bn_mode": exp.get("bn_mode", "average"),
               "bn_batch_size": exp.get("bn_batch_size", 0) or None}
    record = functools.partial(
        barrier_record, definition=exp.get("barrier_definition", "midpoint_mean"))

    def barrier(prefix, a, b, ids, mask=None):
        return cached_barrier(prefix, model, dataset, a, b, exp, runs_root, ids, mask=mask,
                              options=options, record=record)

    return barrier


def run_seed(config: ConfigDict, seed: int, dataset, runs_root, progress: bool) -> dict:
    exp = config.experiment
    barrier = make_barrier_fn(config, build_model(config.model, dataset.num_classes), dataset,
                              runs_root)
    base = _seeded(config, seed, "lrr")
    dense = lottery.final_run("dense", None, base, dataset, init_seed=seed + exp.dense_seed,
                              runs_root=runs_root, progress=progress)
    result = {"seed": seed, "dense": dense.summary["test_accuracy"], "rounds": {}}
    for method in METHODS:
        cfg = _seeded(config, seed, method)
        rounds = lottery.imp(cfg, dataset, runs_root=runs_root, progress=progress)
        psi_init = initial_variables(cfg, dataset)["params"]
        # Round r was trained under its own mask: its accuracy belongs to its density.
        result.setdefault("imp_curve", {})[method] = [
            {"round": r.index, "remaining": r.remaining, "accuracy": r.summary["test_accuracy"]}
            for r in rounds]
        for k in exp.final_rounds:
            result["rounds"].setdefault(str(k), {})[method] = final_round(
                config, cfg, rounds[k], psi_init, seed, dataset, barrier, runs_root, progress)
    return result


def final_round(config: ConfigDict, cfg: ConfigDict, src, psi_init, seed: int, dataset,
                barrier, runs_root, progress: bool) -> dict:
    """The final runs from pruned round ``src`` of the pruning run ``cfg`` (retrain, sign
    transfer to every transfer seed, mask transfer) and the three barriers (``barrier``: see
    :func:`make_barrier_fn`)."""
    exp = config.experiment
    kw = dict(runs_root=runs_root, progress=progress)
    # Official script: `--seed ft_seed` for retrain, sign and mask transfer alike (data
    # order); the inits are drawn unseeded. Here transfer seed s = seed + offset seeds
    # both the fresh init and the data order.
    first = seed + exp.transfer_seeds[0]
    retrain = lottery.final_run("retrain", src, cfg, dataset, init_seed=first, data_seed=first,
                                **kw)
    signs = [lottery.final_run("sign_transfer", src, cfg, dataset, init_seed=seed + off,
                               data_seed=seed + off, **kw) for off in exp.transfer_seeds]
    masked = lottery.final_run("mask_transfer", src, cfg, dataset, init_seed=first,
                               data_seed=first, **kw)
    pruned = {"params": src.pruned_params, "batch_stats": src.batch_stats}
    chosen = select(src.params, is_norm)
    at_init = {"params": jax.tree.map(lambda c, p, p0: p0 if c else p, chosen,
                                      src.pruned_params, psi_init),
               "batch_stats": src.batch_stats}
    return {
        "remaining": src.remaining,
        "pruned": src.summary["test_accuracy"],
        "retrain": retrain.summary["test_accuracy"],
        "sign_transfer": [s.summary["test_accuracy"] for s in signs],
        "mask_transfer": masked.summary["test_accuracy"],
        "barrier_norm": barrier("norm", pruned, at_init, [str(src.directory), "psi_init"]),
        "barrier_st_retrain": barrier("st-rt", _variables(signs[0]), _variables(retrain),
                                      [str(signs[0].directory), str(retrain.directory)],
                                      mask=src.mask),
        "barrier_st_st": barrier("st-st", _variables(signs[0]), _variables(signs[1]),
                                 [str(signs[0].directory), str(signs[1].directory)],
                                 mask=src.mask),
    }


COLUMNS = [
    ("dense", None, "dense"), ("LRR retrain", "lrr", "retrain"), ("AWS retrain", "aws", "retrain"),
    ("LRR sign transfer", "lrr", "sign_transfer"), ("AWS sign transfer", "aws", "sign_transfer"),
    ("LRR mask transfer", "lrr", "mask_transfer"), ("AWS mask transfer", "aws", "mask_transfer"),
]
BARRIERS = [("(i) norm path", "barrier_norm"), ("(ii) ST vs retrain", "barrier_st_retrain"),
            ("(iii) ST vs ST", "barrier_st_st")]


def column_samples(results: list[dict], per: list[dict], method: str | None, key: str
                   ) -> list[float]:
    """The samples of one accuracy column at one round (``per``: that round of every seed):
    every fresh init of every seed for the sign transfer, one number per seed otherwise."""
    if method is None:
        return [r["dense"] for r in results]
    values = [p[method][key] for p in per]
    return pooled(values) if key == "sign_transfer" else per_seed_mean(values)


def make_table(config: ConfigDict, results: list[dict], out: Path, title: str) -> str:
    header = ["remaining"] + [c[0] for c in COLUMNS] + [
        f"{m.upper()} barrier {b}" for b, _ in BARRIERS for m in METHODS] + [
        f"{m.upper()} err(ψ_init) − err(ψ)" for m in METHODS]
    rows = []
    for k in config.experiment.final_rounds:
        per = [r["rounds"][str(k)] for r in results]
        row = [f"{per[0]['aws']['remaining']:.1%} (k={k})"]
        row += [mean_std(column_samples(results, per, method, key), 100)
                for _, method, key in COLUMNS]
        for _, key in BARRIERS:
            for m in METHODS:
                row.append(mean_std([p[m][key]["error_barrier"] for p in per], 100))
        for m in METHODS:  # the norm path is often monotone: its barrier misses the damage
            row.append(mean_std([p[m]["barrier_norm"]["error"][-1]
                                 - p[m]["barrier_norm"]["error"][0] for p in per], 100))
        rows.append(row)
    definition = config.experiment.get("barrier_definition", "midpoint_mean")
    notes = (f"Test accuracy (%) and error barriers (points of test error; definition "
             f"{definition}, BN re-estimation {config.experiment.get('bn_mode', 'average')}), "
             f"mean ± std over "
             f"seeds {list(config.experiment.seeds)} (sign transfer: both fresh inits of every "
             f"seed). Pruning stage: {config.imp.mode}, {config.imp.rounds} rounds x "
             f"{config.imp.epochs_per_round} epochs after {config.imp.warmup_epochs} warm-up; "
             f"final runs {config.final.epochs} epochs ({config.final.optimizer.schedule}). "
             f"Last columns: test-error rise when the norm params go back to init (end of "
             f"path (i)), in points.")
    return write_table(out / "table", header, rows, title=title, notes=notes)


#: The barriers the paper can be compared on (points of test error), by result key.
PAPER_BARRIERS = [("ST vs retrain barrier", "barrier_st_retrain"),
                  ("ST vs ST barrier", "barrier_st_st")]


def paper_rows(config: ConfigDict, results: list[dict]) -> list[list[str]]:
    """``[round, column, ours, paper, ours − paper]`` for every number the paper has
    (``experiment.paper.rounds``, from ``paper_numbers/aws.json``) at a round we ran."""
    rounds = config.experiment.get("paper", ConfigDict()).get("rounds", ConfigDict())
    rows = []
    for k in config.experiment.final_rounds:
        ref = rounds.get(str(k))
        if ref is None:
            continue
        per = [r["rounds"][str(k)] for r in results]
        label = f"{per[0]['aws']['remaining']:.1%} (k={k})"
        for name, method, key in COLUMNS:
            value = ref.get("dense") if method is None else ref.get(method, {}).get(key)
            if value is not None:
                ours = column_samples(results, per, method, key)
                rows.append([label, name, mean_std(ours, 100), *paper_columns(ours, value)])
        for name, key in PAPER_BARRIERS:
            for m in METHODS:
                value = ref.get(m, {}).get(key)
                if value is not None:
                    ours = [p[m][key]["error_barrier"] for p in per]
                    rows.append([label, f"{m.upper()} {name}", mean_std(ours, 100),
                                 *paper_columns(ours, value)])
    return rows


def make_paper_table(config: ConfigDict, results: list[dict], out: Path, title: str
                     ) -> str | None:
    """``paper.md``/``.csv``: our numbers beside the paper's, where it has any (else None)."""
    rows = paper_rows(config, results)
    if not rows:
        return None
    source = config.experiment.paper.get("source", "")
    return write_table(out / "paper", ["remaining", "column", "ours", "paper", "ours − paper"],
                       rows, title=f"{title}: beside the paper",
                       notes=f"Paper numbers: {source}. Accuracy in %, barriers in points of "
                             f"test error; ours mean ± std over seeds as in the main table.")


def plot_curves(results: list[dict], out: Path) -> list[Path]:
    plt = pyplot()
    paths = []
    for k in results[0]["rounds"]:
        fig, axes = plt.subplots(1, len(BARRIERS), figsize=(4 * len(BARRIERS), 3.2))
        for ax, (label, key) in zip(axes, BARRIERS, strict=True):
            for m, color in zip(METHODS, ("tab:blue", "tab:red"), strict=True):
                for i, r in enumerate(results):
                    c = r["rounds"][k][m][key]
                    ax.plot(c["alphas"], 100 * np.asarray(c["error"]), color=color, alpha=0.8,
                            label=m.upper() if i == 0 else None)
            ax.set_title(label)
            ax.set_xlabel("alpha")
            ax.set_ylabel("test error (%)")
            ax.legend()
        remaining = results[0]["rounds"][k]["aws"]["remaining"]
        fig.suptitle(f"Barrier curves at round {k} ({remaining:.1%} remaining)")
        paths.append(save_figure(fig, out / f"barriers_round{k}.png"))
    return paths


def training_epochs(config: ConfigDict) -> float:
    """Epochs of training the whole experiment runs (for cost estimates)."""
    imp, exp = config.imp, config.experiment
    pruning = len(METHODS) * (imp.warmup_epochs + imp.rounds * imp.epochs_per_round)
    finals = 1 + len(METHODS) * len(exp.final_rounds) * (2 + len(exp.transfer_seeds))
    return len(exp.seeds) * (pruning + finals * config.final.epochs)


def run(config: ConfigDict, args, out: Path) -> list[dict]:
    dataset = load_dataset(config.data, args.data_dir)
    return run_seeds(config.experiment.seeds, lambda seed: run_seed(
        config, seed, dataset, args.runs_root, not args.no_progress))


def report(config: ConfigDict, results: list[dict], out: Path, title: str
           ) -> tuple[str, list[Path]]:
    figures = plot_curves(results, out)
    if all("imp_curve" in r for r in results):
        figures.append(plot_imp_curve(results, out))
    markdown = make_table(config, results, out, title)
    beside = make_paper_table(config, results, out, title)
    return (markdown + "\n" + beside if beside else markdown), figures


def plot_imp_curve(results: list[dict], out: Path) -> Path:
    """Test accuracy of the pruned-stage network after every IMP round vs remaining weights."""
    plt = pyplot()
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for m, color in zip(METHODS, ("tab:blue", "tab:red"), strict=True):
        for i, r in enumerate(results):
            pts = r["imp_curve"][m]
            ax.plot([p["remaining"] * 100 for p in pts], [p["accuracy"] * 100 for p in pts],
                    "o-", ms=3, color=color, alpha=0.8, label=m.upper() if i == 0 else None)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    lowest = min(p["remaining"] for r in results for c in r["imp_curve"].values() for p in c)
    ax.set_xticks([t for t in (100, 50, 20, 10, 5, 2, 1) if t >= 90 * lowest])
    ax.invert_xaxis()
    ax.set_xlabel("remaining weights (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("IMP: accuracy at the end of each round")
    ax.legend()
    return save_figure(fig, out / "imp_rounds.png")


def main(argv=None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
