"""Permuted lottery-ticket masks (Adnan, Jain, Sharma, Krishnan, Ioannou, ICML 2025): sparse
training from a new init B with A's IMP mask, unpermuted (naive), aligned by a permutation
(permuted), or randomly permuted (control), against the lottery ticket itself (LTH).

    python -m signticket.experiments.permuted_masks \
        --config signticket/experiments/configs/permuted_fmnist_mlp.py \
        [--config.key=value ...] [--seeds 0 1]

Per seed: dense A and B (same schedule, rewind points after exactly k epochs), IMP on A to each
target sparsity, matching pi(A_T) ≈ B_T, the dense barriers A–B and A–pi^-1(B) (BN statistics
re-estimated at every alpha), and the sparse runs of every (sparsity, k, method). Every training
run is a resumable config-hashed run (see ``signticket.rebasin.procedure``); per-seed results and
barriers are cached. Writes ``table.md``/``.csv``, ``dense.md``/``.csv`` and ``results.json`` to
``--out`` (default ``results/permuted_masks/<config name>``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from signticket.checkpoint import config_hash, run_identity
from signticket.experiments.cli_common import experiment_main
from signticket.experiments.common import (
    cached_barrier,
    pyplot,
    run_seeds,
    save_figure,
    seed_results,
)
from signticket.experiments.tables import (
    mean_std,
    paired_differences,
    paper_cell,
    paper_gap,
    write_table,
)
from signticket.rebasin import procedure
from signticket.runs import build_model, load_dataset

PAPER_NUMBERS = Path(__file__).parent / "paper_numbers" / "permuted_masks.json"
NAME = "permuted_masks"
TITLE = "Permuted masks"
LABELS = {"lth": "LTH", "naive": "naive", "permuted": "permuted", "random": "random-perm control"}


def make_barrier_fn(config: ConfigDict, dataset, runs_root):
    """``(a, b, ids) -> barrier dict`` over ``signticket.lmc.barrier_curve``, cached as JSON.

    The official code computes no barrier: it scores only the midpoint (alpha = 0.5) of the
    dense pair, before and after resetting BN statistics (``experiment.py`` lines 113-124,
    ``utils.reset_bn_stats``). We keep the whole curve, report its midpoint (:func:`midpoint`)
    and the barrier as the excess over the chord, ``max_alpha err(alpha) - ((1 - alpha)
    err(0) + alpha err(1))`` (``lmc.error_barrier``; Git Re-Basin's definition).
    """
    exp = config.experiment
    model = build_model(config.model, dataset.num_classes)

    def barrier(a, b, ids):
        return cached_barrier("pm", model, dataset, a, b, exp, runs_root, ids)

    return barrier


def midpoint(curve: dict, key: str = "error") -> float:
    """``key`` (``"error"`` / ``"loss"``) of the curve at alpha = 0.5 (the official metric)."""
    return float(np.interp(0.5, curve["alphas"], curve[key]))


def paper_rows(config: ConfigDict) -> dict:
    key = config.experiment.get("paper_key", "")
    if not key:
        return {}
    return json.loads(PAPER_NUMBERS.read_text()).get(key, {})


def make_tables(config: ConfigDict, results: list[dict], out: Path, title: str) -> str:
    """Sparse table (rows sparsity x k; mean ± std over seeds; paper beside) and dense table."""
    return (make_sparse_table(config, results, out, title) + "\n"
            + make_dense_table(config, results, out, f"{title} — dense models"))


#: The methods the paper reports (its columns beside ours).
PAPER_METHODS = ("lth", "naive", "permuted")


def sparse_accuracies(results: list[dict], methods: list[str], sparsity: float, k: int
                      ) -> dict[str, dict[int, float]]:
    """``{method: {seed: test accuracy}}`` of the sparse runs at one (sparsity, k)."""
    cells = {r["seed"]: r["sparse"][f"{float(sparsity)}"][f"{int(k)}"] for r in results}
    return {m: {seed: cell[m] for seed, cell in cells.items()} for m in methods}


def paper_cells(ref: dict[str, float], accuracies: dict[str, dict[int, float]]) -> list[str]:
    """The paper's LTH / naive / permuted numbers (shown whether or not we ran the method) and
    one cell of our gaps to them."""
    gaps = [paper_gap(list(accuracies.get(m, {}).values()), ref.get(m)) for m in PAPER_METHODS]
    return [paper_cell(ref.get(m)) for m in PAPER_METHODS] + [" / ".join(gaps)]


def make_sparse_table(config: ConfigDict, results: list[dict], out: Path, title: str) -> str:
    exp = config.experiment
    paper = paper_rows(config)
    methods = list(exp.methods)
    paired = "permuted" in methods and "naive" in methods
    header = ["sparsity", "k"] + [LABELS[m] for m in methods]
    if paper:
        header += [f"paper {LABELS[m]}" for m in PAPER_METHODS]
        header += ["ours − paper (LTH / naive / permuted)"]
    if paired:
        header += ["permuted − naive"]
    rows = []
    for s in exp.sparsities:
        for k in config.rewind_epochs:
            accuracies = sparse_accuracies(results, methods, s, k)
            row = [f"{float(s):.0%}", str(k)]
            row += [mean_std(list(accuracies[m].values()), 100) for m in methods]
            if paper:
                row += paper_cells(paper.get(f"{float(s)}/{int(k)}", {}), accuracies)
            if paired:
                delta = paired_differences(accuracies["permuted"], accuracies["naive"])
                row.append(mean_std(list(delta.values()), 100))
            rows.append(row)
    notes = sparse_notes(config, [r["seed"] for r in results], bool(paper), paired)
    return write_table(out / "table", header, rows, title=title, notes=notes)


def sparse_notes(config: ConfigDict, seeds: list[int], with_paper: bool, paired: bool) -> str:
    notes = (
        f"Test accuracy (%), mean ± std over seeds {seeds} ({len(seeds)} run(s) per cell). "
        f"Model {config.model.name} {dict(config.model.kwargs)} on {config.data.name}; dense "
        f"{config.dense_epochs} epochs ({config.optimizer.name} lr {config.optimizer.learning_rate}"
        f" {config.optimizer.schedule}); mask: global IMP-{config.imp.mode} "
        f"({config.imp.fraction:.0%}/round, {config.imp.ft_epochs} epoch(s) at lr "
        f"{config.imp.ft_optimizer.learning_rate}, momentum "
        f"{config.imp.ft_optimizer.momentum}, wd {config.imp.ft_optimizer.weight_decay}); "
        f"sparse runs {config.dense_epochs} − k epochs "
        f"at lr {config.sparse.optimizer.learning_rate} from {rewind_note(config)}; pruned set "
        f"{config.imp.get('prune_scope', 'no_head')}; {config.matching.method} matching."
        + (" 'permuted − naive' is paired per seed." if paired else "")
    )
    if with_paper:
        notes += (" Paper rows use the official rewind point k (the weights after k + 1 epochs)"
                  + ("." if config.get("rewind_convention", "exact") == "official" else
                     "; THIS RUN USES THE EXACT CONVENTION, so its k is one epoch earlier."))
    return notes


def make_dense_table(config: ConfigDict, results: list[dict], out: Path, title: str) -> str:
    header = ["dense A", "dense B", "midpoint error A–B", "midpoint error A–π(B)",
              "error barrier A–B", "error barrier A–π(B)",
              "loss barrier A–B", "loss barrier A–π(B)"]
    row = [mean_std([r["dense_a"] for r in results], 100),
           mean_std([r["dense_b"] for r in results], 100)]
    for which in ("barrier_ab", "barrier_a_pib"):
        row.append(mean_std([midpoint(r[which]) for r in results], 100))
    for key, scale, digits in (("error_barrier", 100, 2), ("loss_barrier", 1, 3)):
        for which in ("barrier_ab", "barrier_a_pib"):
            row.append(mean_std([r[which][key] for r in results], scale, digits))
    notes = ("Dense test accuracy (%); midpoint error = test error (%) at alpha = 0.5 "
             "(the official code's only interpolation metric); barriers = max excess "
             "over the chord between the endpoints, error in points, loss in nats; "
             f"BN statistics re-estimated at each of {config.experiment.barrier_points} alphas.")
    return write_table(out / "dense", header, [row], title=title, notes=notes)


def rewind_note(config: ConfigDict) -> str:
    if config.get("rewind_convention", "exact") == "official":
        return ("the official rewind point k (sparse-rebasin --rewind k: the weights after "
                "k + 1 epochs)")
    return "the weights after exactly k epochs"


def training_epochs(config: ConfigDict) -> float:
    """Epochs of training the whole experiment runs (for cost estimates)."""
    exp = config.experiment
    rounds = math.ceil(math.log(1 - max(exp.sparsities)) / math.log(1 - config.imp.fraction))
    pruning = rounds * (config.imp.ft_epochs if config.imp.mode == "ft" else config.dense_epochs)
    sparse = sum(len(exp.methods) * (config.dense_epochs - k)
                 for k in config.rewind_epochs) * len(exp.sparsities)
    return len(exp.seeds) * (2 * config.dense_epochs + pruning + sparse)


def run(config: ConfigDict, args, out: Path) -> list[dict]:
    dataset = load_dataset(config.data, args.data_dir)
    barrier_fn = make_barrier_fn(config, dataset, args.runs_root)
    seeds = list(config.experiment.seeds if args.seeds is None else args.seeds)
    tag = config_hash(run_identity(config))  # the config that shapes the results
    run_seeds(seeds, lambda seed: procedure.run_seed(
        config, dataset, seed, runs_root=args.runs_root, progress=not args.no_progress,
        barrier_fn=barrier_fn), cache_dir=out, tag=tag)
    # Every seed finished in --out, also by other processes (``--seeds`` splits the seeds).
    return seed_results(out, tag)


def report(config: ConfigDict, results: list[dict], out: Path, title: str
           ) -> tuple[str, list[Path]]:
    return make_tables(config, results, out, title), [plot_barriers(results, out)]


def plot_barriers(results: list[dict], out: Path) -> Path:
    """Test error along the dense paths A–B and A–π(B) (one line per seed)."""
    fig, ax = pyplot().subplots(figsize=(5, 3.4))
    for key, label, color in (("barrier_ab", "A–B (naive)", "tab:gray"),
                              ("barrier_a_pib", "A–π(B) (permuted)", "tab:green")):
        for i, r in enumerate(results):
            c = r[key]
            ax.plot(c["alphas"], 100 * np.asarray(c["error"]), color=color, alpha=0.8,
                    label=label if i == 0 else None)
    ax.set_xlabel("alpha")
    ax.set_ylabel("test error (%)")
    ax.set_title("Dense interpolation, BN re-estimated")
    ax.legend()
    return save_figure(fig, out / "barriers_dense.png")


def _add_arguments(parser) -> None:
    parser.add_argument("--seeds", type=int, nargs="*", default=None,
                        help="run only these seeds (default: config.experiment.seeds); the "
                             "table uses every seed whose result exists in --out")


def main(argv=None) -> int:
    return experiment_main(sys.modules[__name__], argv, _add_arguments)


if __name__ == "__main__":
    sys.exit(main())
