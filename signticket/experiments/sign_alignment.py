"""Sign alignment at CPU scale (Sign-In paper, Sec. 3 and its ImageNet ResNet-50 90 % table):
a fresh random init given a dense-to-sparse run's *signs* and learned mask recovers that run's
accuracy; given its *magnitudes* with random signs it does not.

    python -m signticket.experiments.sign_alignment \
        --config signticket/experiments/configs/sign_in_cpu_dst.py

For every seed and source method (RiGL, AC/DC; ``experiment.alignment_sources``) the source
run is the one ``experiments.sign_in`` trains (reused when finished), with params and masks
saved after ``experiment.snapshot_epochs`` (early, final). From a *fresh* init (seed + 1000)
and the source's final mask ``M``, masked SGD with the baseline's recipe trains

* ``signs_e<k>``: ``|theta_fresh| * sign(theta_src at epoch k) * M`` (entries that were 0 at
  epoch k keep the fresh sign),
* ``mags_final``: ``|theta_src final| * sign(theta_fresh) * M`` (learned magnitudes, random
  signs),
* ``random``: ``theta_fresh * M``,

over every kernel (the dense head included); biases and norms are the fresh init's. Each is a
resumable run whose inputs name its source run. Writes ``table.md``/``.csv`` and
``results.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from signticket.experiments import sign_in as si
from signticket.experiments.cli_common import experiment_main
from signticket.experiments.common import progress_lines, run_seeds
from signticket.experiments.tables import mean_std, paired_differences, write_table
from signticket.run_desc import Input, RunDesc
from signticket.runs import initial_variables, load_dataset, train_run
from signticket.tree import PyTree, is_kernel

NAME = "sign_alignment"
TITLE = "Sign alignment: learned signs vs learned magnitudes on a fresh init"
FRESH_OFFSET = 1000


def variants(config: ConfigDict) -> list[str]:
    epochs = tuple(config.experiment.snapshot_epochs)
    return [f"signs_e{e}" for e in epochs] + ["mags_final", "random"]


def transfer(kind: str, fresh: PyTree, snaps: dict[int, PyTree], final_epoch: int,
             mask: PyTree) -> PyTree:
    """The init of one variant (see module doc); pruned entries 0."""
    final = snaps[final_epoch]

    def leaf(path, f, fin, m, *early):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if not is_kernel(name, f):
            return f
        if kind == "random":
            out = f
        elif kind == "mags_final":
            out = jnp.abs(fin) * jnp.sign(f)
        else:
            src = early[0]
            out = jnp.abs(f) * jnp.where(src != 0, jnp.sign(src), jnp.sign(f))
        return jnp.where(m, out, 0.0)

    if kind.startswith("signs_e"):
        e = int(kind.removeprefix("signs_e"))
        return jax.tree_util.tree_map_with_path(leaf, fresh, final, mask, snaps[e])
    return jax.tree_util.tree_map_with_path(leaf, fresh, final, mask)


def run(config: ConfigDict, args, out: Path) -> list[dict]:
    exp = config.experiment
    epochs = tuple(exp.snapshot_epochs)
    if not epochs or max(epochs) != config.epochs:
        raise SystemExit("experiment.snapshot_epochs must include the final epoch")
    dataset = load_dataset(config.data, args.data_dir)
    announce = progress_lines(args.no_progress)

    def seed_runs(seed: int) -> list[dict]:
        return [r for s in exp.sparsities
                for src_arm in exp.get("alignment_sources", ("rigl", "acdc"))
                for r in align_source(config, src_arm, seed, s, dataset, args.runs_root,
                                      not args.no_progress, announce)]

    return [r for runs in run_seeds(exp.seeds, seed_runs) for r in runs]


def source_snapshots(config: ConfigDict, src_arm: str, seed: int, sparsity: float, dataset,
                     src_dir: Path) -> tuple[dict[int, PyTree], PyTree]:
    """The source run's params after every snapshot epoch, and its final mask."""
    like = initial_variables(si.arm_config(config, src_arm, seed, sparsity), dataset)["params"]
    snaps, final_mask = {}, None
    for e in config.experiment.snapshot_epochs:
        snaps[e], m = si.load_snapshot(si.snapshot_path(src_dir, e), like)
        if e == config.epochs:
            final_mask = m
    return snaps, final_mask


def align_source(config: ConfigDict, src_arm: str, seed: int, sparsity: float, dataset,
                 runs_root, progress: bool, announce) -> list[dict]:
    """The source run (``experiments.sign_in``'s arm ``src_arm``) and every variant trained
    from a fresh init with its signs, magnitudes or neither (:func:`variants`)."""
    src = si.run_arm(config, src_arm, seed, sparsity, dataset, runs_root, progress)
    src_dir = Path(src["dir"])
    snaps, final_mask = source_snapshots(config, src_arm, seed, sparsity, dataset, src_dir)
    results = [{"source": src_arm, "variant": "source", "seed": seed, "sparsity": sparsity,
                "test_accuracy": src["test_accuracy"]}]
    for kind in variants(config):
        cfg = si.arm_config(config, "random", seed, sparsity)
        cfg.seed = seed + FRESH_OFFSET
        cfg.transfer = ConfigDict({"source": src_dir.name, "kind": kind})
        fresh = initial_variables(cfg, dataset)
        init = transfer(kind, fresh["params"], snaps, config.epochs, final_mask)
        name = f"sign_alignment-{src_arm}-{kind}"
        recipe = f"{kind}({src_dir.name}, init seed {cfg.seed})"
        desc = RunDesc(cfg, name=name, init_params=Input(init, recipe),
                       init_batch_stats=Input(fresh["batch_stats"], f"init seed {cfg.seed}"),
                       mask=Input(final_mask, f"final mask of {src_dir.name}"))
        res = train_run(desc, dataset, runs_root=runs_root, progress=progress)
        acc = float(res.summary["test_accuracy"])
        results.append({"source": src_arm, "variant": kind, "seed": seed,
                        "sparsity": sparsity, "test_accuracy": acc,
                        "dir": str(res.directory)})
        announce(f"seed {seed} {src_arm} {kind}: acc {acc:.4f}")
    return results


LABELS = {"source": "dense-to-sparse run itself (baseline)", "mags_final":
          "final magnitudes, random signs + learned mask", "random": "random init + learned mask"}


def _label(v: str) -> str:
    if v.startswith("signs_e"):
        return f"epoch-{v.removeprefix('signs_e')} signs + learned mask"
    return LABELS[v]


def accuracies(results: list[dict], sparsity: float, source: str, variant: str
               ) -> dict[int, float]:
    """``{seed: test accuracy}`` of one variant of one source at one sparsity."""
    return {r["seed"]: r["test_accuracy"] for r in results
            if r["sparsity"] == sparsity and r["source"] == source and r["variant"] == variant}


def report(config: ConfigDict, results: list[dict], out: Path, title: str):
    exp = config.experiment
    sources = list(dict.fromkeys(r["source"] for r in results))
    header = ["sparsity", "init"] + [f"{si.LABELS[s]} acc (%)" for s in sources] + [
        f"{si.LABELS[s]} Δ vs random init" for s in sources]
    rows = []
    for s in exp.sparsities:
        for v in ["source", *variants(config)]:
            accs, deltas = [], []
            for src in sources:
                rs = accuracies(results, s, src, v)
                accs.append(mean_std(list(rs.values()), 100))
                deltas.append("—" if v == "random" else mean_std(list(paired_differences(
                    rs, accuracies(results, s, src, "random")).values()), 100))
            rows.append([f"{round(100 * s)} %", _label(v), *accs, *deltas])
    notes = (f"{config.model.name} on {config.data.name} (train subset "
             f"{config.data.train_subset}), {config.epochs} epochs for the source and for every "
             f"fresh-init run (masked SGD, the random-mask baseline's recipe); mean ± std over "
             f"seeds {list(exp.seeds)}; Δ paired per seed. Fresh init: seed + {FRESH_OFFSET}. "
             "Paper (ImageNet ResNet-50, 90 %): AC/DC 74.68 / e10 signs 73.97 / e30 74.89 / final "
             "74.88 / final mags 70.94 / random 70.6; RiGL 73.75 / 73.32 / 73.7 / 73.74 / 72.40 / "
             "71.89.")
    return write_table(out / "table", header, rows, title=title, notes=notes), []


def main(argv=None) -> int:
    return experiment_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
