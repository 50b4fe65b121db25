"""Each experiment's table logic on synthetic per-seed results (no training): which numbers are
paired, pooled or put beside the paper's, and that every row has the header's columns."""

import csv

import numpy as np
import pytest
from ml_collections import ConfigDict

from signticket.experiments import aws, composed, permuted_masks, sign_alignment, sign_in
from signticket.experiments.configs import (
    aws_cpu,
    composed_cpu,
    permuted_fmnist_mlp,
    sign_in_cpu,
    sign_in_cpu_dst,
)
from signticket.experiments.tables import mean_std


def _csv(path):
    with path.open() as f:
        header, *rows = list(csv.reader(f))
    assert all(len(row) == len(header) for row in rows)  # no row shifted under another header
    return [dict(zip(header, row, strict=True)) for row in rows]


# --- permuted masks ----------------------------------------------------------------------------


def _permuted(methods, paper_key=""):
    c = permuted_fmnist_mlp.get_config()
    c.experiment.methods, c.experiment.sparsities, c.rewind_epochs = tuple(methods), (0.8,), (50,)
    c.experiment.paper_key = paper_key
    curve = {"alphas": [0, 0.5, 1], "error": [0.1, 0.4, 0.1], "loss": [0.3, 1.0, 0.3],
             "error_barrier": 0.3, "loss_barrier": 0.7}
    accuracy = {"lth": 0.90, "naive": 0.85, "permuted": 0.87, "random": 0.80}
    results = [{"seed": seed, "dense_a": 0.9, "dense_b": 0.9, "barrier_ab": curve,
                "barrier_a_pib": curve,
                "sparse": {"0.8": {"50": {m: accuracy[m] + 0.01 * seed for m in methods}}}}
               for seed in (0, 1, 2)]
    return c, results


def test_permuted_minus_naive_is_a_column_only_when_both_ran(tmp_path):
    config, results = _permuted(["lth", "permuted", "random"])
    permuted_masks.make_tables(config, results, tmp_path, "T")
    (row,) = _csv(tmp_path / "table.csv")
    assert "permuted − naive" not in row and row["permuted"] == "88.00 ± 1.00"
    config, results = _permuted(["naive", "permuted"])
    permuted_masks.make_tables(config, results, tmp_path, "T")
    (row,) = _csv(tmp_path / "table.csv")
    assert row["permuted − naive"] == "2.00 ± 0.00"  # paired per seed: no seed-to-seed spread


def test_permuted_paper_columns_show_the_paper_even_for_a_method_not_run(tmp_path):
    config, results = _permuted(["lth", "permuted"], paper_key="cifar10_resnet20x1")
    permuted_masks.make_tables(config, results, tmp_path, "T")
    (row,) = _csv(tmp_path / "table.csv")
    assert [row[f"paper {m}"] for m in ("LTH", "naive", "permuted")] == [
        "92.15", "90.66", "90.76"]
    # ours (91 and 88) minus the paper; naive did not run here
    assert row["ours − paper (LTH / naive / permuted)"] == "-1.15 / — / -2.76"


def test_permuted_dense_table(tmp_path):
    config, results = _permuted(["lth"])
    permuted_masks.make_tables(config, results, tmp_path, "T")
    (row,) = _csv(tmp_path / "dense.csv")
    assert row["midpoint error A–B"] == "40.00 ± 0.00"
    assert row["error barrier A–π(B)"] == "30.00 ± 0.00"
    assert row["loss barrier A–B"] == "0.700 ± 0.000"


# --- Sign-In -----------------------------------------------------------------------------------


def _sign_in_result(arm, seed, accuracy):
    flips = {"overall": 0.1, "per_layer": {"conv0/kernel": 0.1}}
    return {"arm": arm, "seed": seed, "sparsity": 0.9, "test_accuracy": accuracy,
            "hessian_top": 2.0, "last": {"flips_vs_init": flips, "cumulative_flips": flips},
            "records": []}


def test_sign_in_deltas_pair_by_seed_and_sit_beside_the_paper(tmp_path):
    c = sign_in_cpu.get_config()
    c.experiment.sparsities, c.experiment.arms = (0.9,), ("random", "sign_in", "rigl",
                                                          "rigl_sign_in")
    c.experiment.paper = ConfigDict({"sign_in": {"90": 80.0}})
    results = [_sign_in_result("random", s, 0.70 + 0.1 * s) for s in (0, 1)]  # seed 2 missing
    results += [_sign_in_result("sign_in", s, 0.72 + 0.1 * s) for s in (0, 1, 2)]
    results += [_sign_in_result("rigl", s, 0.75) for s in (0, 1, 2)]
    results += [_sign_in_result("rigl_sign_in", s, 0.74) for s in (0, 1, 2)]
    sign_in.make_table(c, results, tmp_path, "T")
    rows = {r["arm"]: r for r in _csv(tmp_path / "table.csv")}
    delta = "Δ vs random (paired)"
    assert rows["+ Sign-In"][delta] == "2.00 ± 0.00"  # seed 2 has no random run to pair with
    assert rows["RiGL + Sign-In"][delta] == "-1.00 ± 0.00 (vs RiGL)"
    assert rows["random mask"][delta] == rows["RiGL"][delta] == "—"
    # ours: mean of 72, 82, 92 = 82
    assert [rows["+ Sign-In"]["paper acc (%)"], rows["+ Sign-In"]["ours − paper"]] == [
        "80.00", "+2.00"]
    assert rows["RiGL"]["paper acc (%)"] == "—"


# --- sign alignment ----------------------------------------------------------------------------


def test_sign_alignment_deltas_pair_by_seed(tmp_path):
    c = sign_in_cpu_dst.get_config()
    c.experiment.sparsities, c.experiment.snapshot_epochs = (0.9,), (c.epochs,)
    results = [{"source": "rigl", "variant": v, "seed": seed, "sparsity": 0.9,
                "test_accuracy": acc + 0.1 * seed}
               for v, acc in (("source", 0.8), (f"signs_e{c.epochs}", 0.79),
                              ("mags_final", 0.7), ("random", 0.72))
               for seed in (0, 1, 2) if not (v == "random" and seed == 0)]
    sign_alignment.report(c, results, tmp_path, "T")
    rows = {r["init"]: r for r in _csv(tmp_path / "table.csv")}
    delta = f"{sign_in.LABELS['rigl']} Δ vs random init"
    assert rows[f"epoch-{c.epochs} signs + learned mask"][delta] == "7.00 ± 0.00"
    assert rows["final magnitudes, random signs + learned mask"][delta] == "-2.00 ± 0.00"
    assert rows["random init + learned mask"][delta] == "—"


# --- composed ----------------------------------------------------------------------------------


def _composed_arm(accuracy):
    return {"test_accuracy": accuracy, "signs_changed": 0.0, "flips_in_training": 0.1}


def test_composed_deltas_pair_by_seed_and_count_wins(tmp_path):
    c = composed_cpu.get_config()
    c.experiment.arms = ("naive", "permuted")
    results = [{"seed": 0, "arms": {"naive": _composed_arm(0.80), "permuted": _composed_arm(0.82)}},
               {"seed": 1, "arms": {"permuted": _composed_arm(0.50)}},  # no naive run to pair
               {"seed": 2, "arms": {"naive": _composed_arm(0.70), "permuted": _composed_arm(0.69)}}]
    rows = composed._arm_rows(c, results)
    assert [arm for arm, _, _ in rows] == ["naive", "permuted"]
    (_, accs, deltas), = [r for r in rows if r[0] == "permuted"]
    assert accs == [0.82, 0.50, 0.69] and list(deltas) == [0, 2]
    assert deltas[0] == pytest.approx(0.02) and deltas[2] == pytest.approx(-0.01)
    composed.make_table(c, results, tmp_path, "T")
    row = _csv(tmp_path / "table.csv")[1]
    assert row["paired vs"] == "naive" and row["seeds with Δ > 0"] == "1/2"
    assert row["Δ (points)"] == mean_std([0.02, -0.01], 100)


# --- AWS ---------------------------------------------------------------------------------------


class _Curve:
    alphas = np.array([0.0, 0.5, 1.0])
    error = np.array([0.1, 0.3, 0.5])  # linear: nothing over the chord
    loss = np.array([1.0, 1.0, 1.0])


def test_aws_barrier_record_keeps_the_official_and_the_over_chord_barrier():
    record = aws.barrier_record(_Curve(), "midpoint_mean")
    assert record["definition"] == "midpoint_mean"
    # the official barrier: the rise over the mean of the endpoint errors (0.5 - 0.3)
    assert record["error_barrier"] == record["error_barrier_midpoint_mean"] == pytest.approx(0.2)
    assert record["error_barrier_over_chord"] == pytest.approx(0.0)
    assert aws.barrier_record(_Curve(), "over_chord")["error_barrier"] == pytest.approx(0.0)


def test_aws_sign_transfers_are_pooled_and_other_columns_are_one_per_seed():
    results = [{"dense": 0.9}, {"dense": 0.8}]
    per = [{"aws": {"sign_transfer": [0.7, 0.8], "retrain": 0.75}},
           {"aws": {"sign_transfer": [0.5, 0.6], "retrain": 0.65}}]
    assert aws.column_samples(results, per, "aws", "sign_transfer") == [0.7, 0.8, 0.5, 0.6]
    assert aws.column_samples(results, per, "aws", "retrain") == [0.75, 0.65]
    assert aws.column_samples(results, per, None, "dense") == [0.9, 0.8]


def test_aws_table_has_a_column_per_header(tmp_path):
    c = aws_cpu.get_config()
    c.experiment.final_rounds = (2,)
    curve = {"alphas": [0, 1], "error": [0.1, 0.2], "error_barrier": 0.05}
    method = {"remaining": 0.64, "pruned": 0.8, "retrain": 0.8, "sign_transfer": [0.7, 0.8],
              "mask_transfer": 0.6, "barrier_norm": curve, "barrier_st_retrain": curve,
              "barrier_st_st": curve}
    results = [{"seed": s, "dense": 0.9, "rounds": {"2": {"lrr": method, "aws": method}}}
               for s in (0, 1)]
    aws.make_table(c, results, tmp_path, "T")
    (row,) = _csv(tmp_path / "table.csv")
    assert row["AWS sign transfer"] == "75.00 ± 5.77"  # four samples: 70, 80, 70, 80
    assert row["LRR err(ψ_init) − err(ψ)"] == "10.00 ± 0.00"


def test_aws_paper_table_puts_the_papers_numbers_beside_ours_where_it_has_them(tmp_path):
    c = aws_cpu.get_config()
    c.experiment.final_rounds = (2, 3)
    c.experiment.paper = ConfigDict({"source": "Table 9 (synthetic)", "rounds": {
        "2": {"dense": 91.0, "aws": {"sign_transfer": 74.0, "barrier_st_st": 1.5}},
    }})
    curve = {"alphas": [0, 1], "error": [0.1, 0.2], "error_barrier": 0.02}
    method = {"remaining": 0.64, "pruned": 0.8, "retrain": 0.8, "sign_transfer": [0.7, 0.8],
              "mask_transfer": 0.6, "barrier_norm": curve, "barrier_st_retrain": curve,
              "barrier_st_st": curve}
    results = [{"seed": s, "dense": 0.9, "rounds": {k: {"lrr": method, "aws": method}
                                                     for k in ("2", "3")}} for s in (0, 1)]
    markdown, _ = aws.report(c, results, tmp_path, "T")
    rows = {r["column"]: r for r in _csv(tmp_path / "paper.csv")}
    # Only the numbers the paper has, at the rounds it has them.
    assert set(rows) == {"dense", "AWS sign transfer", "AWS ST vs ST barrier"}
    assert all(r["remaining"] == "64.0% (k=2)" for r in rows.values())
    assert (rows["AWS sign transfer"]["paper"], rows["AWS sign transfer"]["ours − paper"]) == (
        "74.00", "+1.00")  # ours 75.00: the pooled sign transfers
    assert rows["dense"]["ours − paper"] == "-1.00"
    assert rows["AWS ST vs ST barrier"]["ours − paper"] == "+0.50"  # points of error
    assert "Table 9 (synthetic)" in markdown
    # No paper numbers: no comparison table.
    c.experiment.paper = ConfigDict({"source": "absent", "rounds": {}})
    other = tmp_path / "none"
    aws.report(c, results, other, "T")
    assert not (other / "paper.csv").exists()
