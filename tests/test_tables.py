"""Table logic on synthetic per-seed results: mean ± std, paired differences, pooling, the
paper's columns, markdown/CSV output; and the shared experiment helpers (seed loop with per-seed
files, cached barriers, figures, experiment.json). Each experiment's own tables:
``tests/test_experiment_tables.py``."""

import csv
import json
import logging

import numpy as np
import pytest

from signticket.checkpoint import config_hash
from signticket.experiments import common
from signticket.experiments.tables import (
    mean_std,
    paired_differences,
    paper_cell,
    paper_columns,
    paper_gap,
    per_seed_mean,
    pooled,
    wins,
    write_table,
)

# --- numbers -----------------------------------------------------------------------------------


def test_mean_std_is_the_sample_std_over_seeds():
    assert mean_std([0.9, 0.8, 0.7], 100) == "80.00 ± 10.00"  # ddof=1: sqrt(200/2) = 10
    assert mean_std([0.5], 100) == "50.00"  # one seed: no spread to report
    assert mean_std([None, 0.5, None], 100) == "50.00"  # missing runs are skipped
    assert mean_std([], 100) == mean_std([None]) == "—"
    assert mean_std([1.0, 2.0], 1, 3) == "1.500 ± 0.707"


def test_paired_differences_pair_by_seed_only():
    arm = {0: 0.80, 1: 0.70, 2: 0.90}
    base = {2: 0.85, 0: 0.75, 3: 0.10}  # seed 1 missing, seed 3 extra, another order
    d = paired_differences(arm, base)
    assert list(d) == [0, 2]  # never pairs seed 1 with another seed's baseline
    assert d[0] == pytest.approx(0.05) and d[2] == pytest.approx(0.05)
    # Pairing removes the seed-to-seed spread the two arms share: same mean gap, no noise.
    assert mean_std(list(d.values()), 100) == "5.00 ± 0.00"
    assert wins(d.values()) == "2/2" and wins([0.1, -0.2, 0.0]) == "1/3" and wins([]) == "—"


def test_pooling_counts_every_run_of_every_seed():
    per_seed = [[0.80, 0.90], [0.60, 0.70]]  # two sign transfers per seed
    assert pooled(per_seed) == [0.80, 0.90, 0.60, 0.70]
    assert per_seed_mean(per_seed) == pytest.approx([0.85, 0.65])
    assert pooled([0.5, [0.25, 0.75]]) == [0.5, 0.25, 0.75]
    # The two summaries differ: pooled has 4 samples, per-seed means 2.
    assert mean_std(pooled(per_seed), 100) != mean_std(per_seed_mean(per_seed), 100)
    assert np.std(pooled(per_seed), ddof=1) == pytest.approx(np.std([.8, .9, .6, .7], ddof=1))


def test_paper_columns_show_the_signed_gap_of_our_mean():
    assert paper_columns([0.91, 0.93], 90.5) == ["90.50", "+1.50"]
    assert paper_columns([0.88], 90.0) == ["90.00", "-2.00"]
    assert paper_columns([0.88], None) == ["—", "—"]  # the paper has no such cell
    assert paper_columns([], 90.0) == ["—", "—"]  # we have no run
    assert paper_columns([0.5, None], 40.0, digits=1) == ["40.0", "+10.0"]
    # The two cells alone, for a table that shows the paper's number whether or not we ran it.
    assert paper_cell(90.0) == "90.00" and paper_cell(None) == "—"
    assert paper_gap([], 90.0) == "—" and paper_gap([0.91, 0.93], 90.5) == "+1.50"


# --- files -------------------------------------------------------------------------------------


def test_write_table_markdown_and_csv_agree(tmp_path):
    header = ["sparsity", "arm", "acc (%)"]
    rows = [["90 %", "Sign-In | c=1", mean_std([0.8, 0.9], 100)], ["95 %", "random", "—"]]
    md = write_table(tmp_path / "t" / "table", header, rows, title="T", notes="n.")
    assert md == (tmp_path / "t" / "table.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "### T" and lines[-1] == "n."
    table = [x for x in lines if x.startswith("|")]
    # Every line has as many columns as the header: a "|" in a cell is escaped.
    assert {len(x.replace("\\|", "").split("|")) for x in table} == {len(header) + 2}
    with (tmp_path / "t" / "table.csv").open() as f:
        assert list(csv.reader(f)) == [header, *rows]  # the CSV keeps cells as they are


# --- the seed loop -----------------------------------------------------------------------------


def test_run_seeds_keeps_each_seed_and_reuses_it(tmp_path, caplog):
    calls = []

    def one(seed):
        calls.append(seed)
        return {"seed": seed, "acc": seed / 10}

    caplog.set_level(logging.INFO, logger="signticket.experiments.common")
    got = common.run_seeds([2, 0], one, cache_dir=tmp_path, tag="abc",
                           describe=lambda s, r: f"seed {s}: acc {r['acc']}")
    assert got == [{"seed": 2, "acc": 0.2}, {"seed": 0, "acc": 0.0}] and calls == [2, 0]
    assert json.loads((tmp_path / "seed2-abc.json").read_text()) == got[0]
    assert [r.getMessage() for r in caplog.records] == ["seed 2: acc 0.2", "seed 0: acc 0.0"]
    # A second pass (a re-run after a kill) reads finished seeds back; a new seed runs.
    assert common.run_seeds([0, 1], one, cache_dir=tmp_path, tag="abc")[0] == got[1]
    assert calls == [2, 0, 1]
    # Another tag (another config) never reads these results.
    common.run_seeds([0], one, cache_dir=tmp_path, tag="xyz")
    assert calls == [2, 0, 1, 0]
    # No cache: plain loop.
    assert common.run_seeds([5], one) == [{"seed": 5, "acc": 0.5}]


def test_seed_results_are_every_finished_seed_in_numeric_order(tmp_path):
    for seed in (10, 2, 1):
        common.run_seeds([seed], lambda s: {"seed": s}, cache_dir=tmp_path, tag="abc")
    common.run_seeds([3], lambda s: {"seed": s}, cache_dir=tmp_path, tag="other")
    (tmp_path / "seedx-abc.json").write_text("{}")  # not a seed's file
    assert [r["seed"] for r in common.seed_results(tmp_path, "abc")] == [1, 2, 10]
    assert common.seed_results(tmp_path, "none") == []


def test_progress_lines_print_without_progress_bars_and_log_with_them(capsys, caplog):
    caplog.set_level(logging.INFO, logger="signticket.experiments.common")
    common.run_seeds([0], lambda s: s, describe=lambda s, r: f"seed {s} done",
                     announce=common.progress_lines(no_progress=True))
    assert capsys.readouterr().out == "seed 0 done\n" and not caplog.records
    common.progress_lines(no_progress=False)("arm done")
    assert capsys.readouterr().out == "" and caplog.records[-1].getMessage() == "arm done"


def test_a_seed_that_fails_leaves_no_result_file(tmp_path):
    def boom(seed):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        common.run_seeds([0], boom, cache_dir=tmp_path, tag="t")
    assert list(tmp_path.iterdir()) == []


# --- cached barriers ---------------------------------------------------------------------------

EXP = {"barrier_points": 3, "bn_batches": 2, "barrier_batch_size": 50}


class _Curve:
    def __init__(self, error):
        self.alphas = np.linspace(0, 1, len(error))
        self.error = np.asarray(error)
        self.loss = 2 * np.asarray(error)


def test_cached_barrier_computes_once_and_keeps_the_old_cache_names(tmp_path):
    calls = []

    def curve_fn(model, preprocess, a, b, dataset, *, alphas, bn_batches, batch_size,
                 mask_a, mask_b):
        calls.append((a, b, len(alphas), bn_batches, batch_size, mask_a, mask_b))
        return _Curve([0.1, 0.5, 0.2])

    dataset = type("D", (), {"preprocess": None})()
    out = common.cached_barrier("st-rt", None, dataset, "A", "B", EXP, tmp_path,
                                ["runs/x", "runs/y"], mask="M", curve_fn=curve_fn)
    assert calls == [("A", "B", 3, 2, 50, "M", "M")]
    # The barrier is the excess over the chord: 0.5 - (0.1 + 0.2) / 2.
    assert out["error_barrier"] == pytest.approx(0.35)
    assert out["loss"] == pytest.approx([0.2, 1.0, 0.4])
    # The file name the experiments used before the helper existed (aws.py / permuted_masks).
    settings = {"ids": ["runs/x", "runs/y"], "points": 3, "bn": 2, "bs": 50}
    path = tmp_path / "barriers" / f"st-rt-{config_hash(settings)}.json"
    assert json.loads(path.read_text()) == out
    again = common.cached_barrier("st-rt", None, dataset, "A", "B", EXP, tmp_path,
                                  ("runs/x", "runs/y"), mask="M", curve_fn=curve_fn)
    assert again == out and len(calls) == 1  # read back, not recomputed
    common.cached_barrier("st-rt", None, dataset, "A", "B", {**EXP, "barrier_points": 5},
                          tmp_path, ["runs/x", "runs/y"], curve_fn=curve_fn)
    assert len(calls) == 2  # other settings: another curve


def test_cached_barrier_options_are_curve_arguments_and_part_of_the_key(tmp_path):
    calls = []

    def curve_fn(model, preprocess, a, b, dataset, **kwargs):
        calls.append(kwargs)
        return _Curve([0.1, 0.5, 0.2])

    dataset = type("D", (), {"preprocess": None})()
    options = {"bn_mode": "ema", "bn_batch_size": 128}
    out = common.cached_barrier("norm", None, dataset, "A", "B", EXP, tmp_path, ["x", "y"],
                                options=options, curve_fn=curve_fn,
                                record=lambda c: {"peak": float(np.max(c.error))})
    assert out == {"peak": 0.5}  # the record is what is stored
    assert calls[0]["bn_mode"] == "ema" and calls[0]["bn_batch_size"] == 128
    # The AWS experiment's cache names from before the helper: bn_mode / bn_bs in the key.
    settings = {"ids": ["x", "y"], "points": 3, "bn": 2, "bs": 50, "bn_mode": "ema",
                "bn_bs": 128}
    assert (tmp_path / "barriers" / f"norm-{config_hash(settings)}.json").exists()
    common.cached_barrier("norm", None, dataset, "A", "B", EXP, tmp_path, ["x", "y"],
                          options={**options, "bn_mode": "average"}, curve_fn=curve_fn)
    assert len(calls) == 2  # another option: another curve


def test_save_figure_writes_and_closes(tmp_path):
    plt = common.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = common.save_figure(fig, tmp_path / "figs" / "a.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert not plt.fignum_exists(fig.number)


# --- results on disk (what `signticket tables` regenerates from) ------------------------------


def test_results_round_trip_and_unfinished_results_are_named(tmp_path):
    from ml_collections import ConfigDict

    from signticket.experiments.cli_common import IncompleteResultsError, load_results, save_results

    results = [{"seed": 0, "acc": 0.5}, {"seed": 1, "acc": 0.75}]
    save_results(tmp_path / "out", "aws", "signticket/experiments/configs/aws_cpu.py",
                 ConfigDict({"seed": 0}), results)
    meta, back = load_results(tmp_path / "out")
    assert back == results and meta["experiment"] == "aws" and meta["config"] == {"seed": 0}
    assert meta["provenance"]["code"] and meta["provenance"]["packages"]["jax"]
    (tmp_path / "out" / "experiment.json").unlink()  # killed before it was marked done
    with pytest.raises(IncompleteResultsError, match="no finished results"):
        load_results(tmp_path / "out")
    save_results(tmp_path / "out", "aws", "c.py", ConfigDict({}), results)
    (tmp_path / "out" / "results.json").write_text('[{"seed": 0')
    with pytest.raises(IncompleteResultsError, match="unreadable"):
        load_results(tmp_path / "out")
