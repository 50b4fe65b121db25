"""AWS ("Find A Winning Sign", Oh, Baik, Lee, ICLR 2025): sign transfer vs retrain vs mask
transfer, with error barriers.

    python -m experiments.aws --config experiments/configs/aws_cpu.py [--config.key=value ...]

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

import json
import sys
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from experiments.cli_common import experiment_main
from experiments.tables import mean_std, write_table
from signticket import lmc, lottery
from signticket.checkpoint import config_hash, write_json_atomic
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


def _barrier(name, model, dataset, a, b, config, runs_root, ids, mask=None):
    """Cached barrier curve between variables ``a`` and ``b`` (ids name them for the cache)."""
    exp = config.experiment
    bn_mode = exp.get("bn_mode", "average")
    bn_bs = exp.get("bn_batch_size", 0) or None
    definition = exp.get("barrier_definition", "midpoint_mean")
    settings = {"ids": ids, "points": exp.barrier_points, "bn": exp.bn_batches,
                "bs": exp.barrier_batch_size, "bn_mode": bn_mode, "bn_bs": bn_bs}
    path = Path(runs_root) / "barriers" / f"{name}-{config_hash(settings)}.json"
    if path.exists():
        return json.loads(path.read_text())
    curve = lmc.barrier_curve(
        model, dataset.preprocess, a, b, dataset,
        alphas=np.linspace(0, 1, exp.barrier_points), bn_batches=exp.bn_batches,
        batch_size=exp.barrier_batch_size, mask_a=mask, mask_b=mask, bn_mode=bn_mode,
        bn_batch_size=bn_bs,
    )
    err_fn, loss_fn = lmc.BARRIERS[definition]
    out = {"alphas": np.asarray(curve.alphas).tolist(), "error": np.asarray(curve.error).tolist(),
           "loss": np.asarray(curve.loss).tolist(), "definition": definition,
           "error_barrier": float(err_fn(curve)), "loss_barrier": float(loss_fn(curve)),
           "error_barrier_over_chord": float(lmc.error_barrier_over_chord(curve)),
           "error_barrier_midpoint_mean": float(lmc.error_barrier_midpoint_mean(curve))}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, out)
    return out


def run_seed(config: ConfigDict, seed: int, dataset, runs_root, progress: bool) -> dict:
    exp = config.experiment
    model = build_model(config.model, dataset.num_classes)
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
            src = rounds[k]
            kw = dict(runs_root=runs_root, progress=progress)
            # Official script: `--seed ft_seed` for retrain, sign and mask transfer alike (data
            # order); the inits are drawn unseeded. Here transfer seed s = seed + offset seeds
            # both the fresh init and the data order.
            first = seed + exp.transfer_seeds[0]
            retrain = lottery.final_run("retrain", src, cfg, dataset, init_seed=first,
                                        data_seed=first, **kw)
            signs = [lottery.final_run("sign_transfer", src, cfg, dataset, init_seed=seed + off,
                                       data_seed=seed + off, **kw) for off in exp.transfer_seeds]
            masked = lottery.final_run("mask_transfer", src, cfg, dataset, init_seed=first,
                                       data_seed=first, **kw)
            pruned = {"params": src.pruned_params, "batch_stats": src.batch_stats}
            chosen = select(src.params, is_norm)
            at_init = {"params": jax.tree.map(lambda c, p, p0: p0 if c else p, chosen,
                                              src.pruned_params, psi_init),
                       "batch_stats": src.batch_stats}
            b_norm = _barrier("norm", model, dataset, pruned, at_init, config, runs_root,
                              [str(src.directory), "psi_init"])
            b_st_rt = _barrier("st-rt", model, dataset, _variables(signs[0]), _variables(retrain),
                               config, runs_root, [str(signs[0].directory),
                                                   str(retrain.directory)], mask=src.mask)
            b_st_st = _barrier("st-st", model, dataset, _variables(signs[0]), _variables(signs[1]),
                               config, runs_root, [str(signs[0].directory),
                                                   str(signs[1].directory)], mask=src.mask)
            result["rounds"].setdefault(str(k), {})[method] = {
                "remaining": src.remaining,
                "pruned": src.summary["test_accuracy"],
                "retrain": retrain.summary["test_accuracy"],
                "sign_transfer": [s.summary["test_accuracy"] for s in signs],
                "mask_transfer": masked.summary["test_accuracy"],
                "barrier_norm": b_norm, "barrier_st_retrain": b_st_rt, "barrier_st_st": b_st_st,
            }
    return result


COLUMNS = [
    ("dense", None, "dense"), ("LRR retrain", "lrr", "retrain"), ("AWS retrain", "aws", "retrain"),
    ("LRR sign transfer", "lrr", "sign_transfer"), ("AWS sign transfer", "aws", "sign_transfer"),
    ("LRR mask transfer", "lrr", "mask_transfer"), ("AWS mask transfer", "aws", "mask_transfer"),
]
BARRIERS = [("(i) norm path", "barrier_norm"), ("(ii) ST vs retrain", "barrier_st_retrain"),
            ("(iii) ST vs ST", "barrier_st_st")]


def make_table(config: ConfigDict, results: list[dict], out: Path, title: str) -> str:
    header = ["remaining"] + [c[0] for c in COLUMNS] + [
        f"{m.upper()} barrier {b}" for b, _ in BARRIERS for m in METHODS] + [
        f"{m.upper()} err(ψ_init) − err(ψ)" for m in METHODS]
    rows = []
    for k in config.experiment.final_rounds:
        per = [r["rounds"][str(k)] for r in results]
        row = [f"{per[0]['aws']['remaining']:.1%} (k={k})"]
        for _, method, key in COLUMNS:
            if method is None:
                vals = [r["dense"] for r in results]
            else:
                vals = [np.mean(p[method][key]) if isinstance(p[method][key], list)
                        else p[method][key] for p in per]
                if key == "sign_transfer":  # every fresh init of every seed is a sample
                    vals = [v for p in per for v in p[method][key]]
            row.append(mean_std(vals, 100))
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


def plot_curves(results: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        fig.tight_layout()
        path = out / f"barriers_round{k}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def training_epochs(config: ConfigDict) -> float:
    """Epochs of training the whole experiment runs (for cost estimates)."""
    imp, exp = config.imp, config.experiment
    pruning = len(METHODS) * (imp.warmup_epochs + imp.rounds * imp.epochs_per_round)
    finals = 1 + len(METHODS) * len(exp.final_rounds) * (2 + len(exp.transfer_seeds))
    return len(exp.seeds) * (pruning + finals * config.final.epochs)


def run(config: ConfigDict, args, out: Path) -> list[dict]:
    dataset = load_dataset(config.data, args.data_dir)
    return [run_seed(config, seed, dataset, args.runs_root, not args.no_progress)
            for seed in config.experiment.seeds]


def report(config: ConfigDict, results: list[dict], out: Path, title: str
           ) -> tuple[str, list[Path]]:
    figures = plot_curves(results, out)
    if all("imp_curve" in r for r in results):
        figures.append(plot_imp_curve(results, out))
    return make_table(config, results, out, title), figures


def plot_imp_curve(results: list[dict], out: Path) -> Path:
    """Test accuracy of the pruned-stage network after every IMP round vs remaining weights."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path = out / "imp_rounds.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
