"""The reproduction suite: tiny versions of the three papers' pipelines end to end on real
Fashion-MNIST (through the quickstart), table regeneration from disk, reuse on re-run, and the
bad-input paths of ``signticket list / reproduce / tables / quickstart``."""

import errno
import json
from pathlib import Path

import pytest

from signticket import cli
from signticket.experiments import cli_common, suite

# Shrinks each quickstart stage to seconds: a few hundred examples, 1-2 epochs, 3 alphas.
TINY = {
    "aws": ["data.train_subset=512", "data.test_subset=256", "imp.warmup_epochs=1",
            "imp.rounds=2", "final.epochs=1", "experiment.final_rounds=(2,)",
            "experiment.barrier_points=3", "experiment.bn_batches=1",
            "experiment.barrier_batch_size=128"],
    "permuted_masks": ["data.train_subset=512", "data.test_subset=256", "dense_epochs=2",
                       "experiment.sparsities=(0.5,)", "matching.max_iter=5",
                       "experiment.barrier_points=3", "experiment.bn_batches=1",
                       "experiment.barrier_batch_size=128"],
    "sign_in": ["data.train_subset=512", "data.test_subset=256", "epochs=2",
                "experiment.seeds=(0,)", "experiment.hessian_batch=32",
                "experiment.hessian_iters=2", "eval_every=1"],
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    kw = dict(results=root / "results", runs_root=str(root / "runs"), data_dir=None,
              progress=False, overrides=TINY)
    first = suite.quickstart(**kw)
    return root, kw, first


def _done_files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in (root / "runs").rglob("DONE.json")}


def test_quickstart_runs_the_three_pipelines(quick):
    root, _, first = quick
    assert [title for title, _, _ in first] == ["AWS", "Permuted masks", "Sign-In"]
    for experiment in ("aws", "permuted_masks", "sign_in"):
        meta, results = cli_common.load_results(root / "results" / experiment)
        assert meta["experiment"] == experiment and results
        assert (root / "results" / experiment / "table.md").exists()
    aws = json.loads((root / "results" / "aws" / "results.json").read_text())[0]
    accuracies = [aws["dense"], *aws["rounds"]["2"]["aws"]["sign_transfer"]]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    # Accuracy after every IMP round, at the density it trained at (dense warm-up first).
    assert [p["round"] for p in aws["imp_curve"]["lrr"]] == [0, 1, 2]
    assert aws["imp_curve"]["lrr"][0]["remaining"] == 1.0
    for _, _, figures in first:
        assert figures and all(Path(f).exists() for f in figures)


def test_rerun_reuses_every_finished_run(quick):
    root, kw, first = quick
    before = _done_files(root)
    again = suite.quickstart(**kw)
    assert _done_files(root) == before  # nothing retrained
    assert [md for _, md, _ in again] == [md for _, md, _ in first]


def test_tables_regenerates_from_disk_and_skips_half_written_runs(quick, capsys):
    root, _, _ = quick
    results = root / "results"
    for p in results.rglob("table.md"):
        p.unlink()
    half = results / "sign_in" / "half_written"
    half.mkdir()
    (half / "results.json").write_text("[")  # killed mid-write, never marked finished
    assert cli.main(["tables", "--results", str(results)]) == 0
    out = capsys.readouterr()
    assert "half_written" in out.err and "no finished results" in out.err
    for experiment in ("aws", "permuted_masks", "sign_in"):
        assert (results / experiment / "table.md").exists()
    index = (results / "README.md").read_text()
    assert "aws/table.md" in index and ".png" in index


def test_reproduce_unknown_table_lists_valid_ones(capsys):
    assert cli.main(["reproduce", "no-such-table"]) == 2
    err = capsys.readouterr().err
    assert "unknown table 'no-such-table'" in err and "aws-cifar100-resnet50" in err


def test_list_shows_every_table_with_costs(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in suite.TABLES:
        assert name in out
    assert "GPU-h" in out and "min" in out


def test_every_table_config_loads_and_counts_epochs():
    for table in suite.TABLES.values():
        for scale in ("paper", "cpu"):
            config = suite.load_config(table.config_file(scale))
            assert table.module().training_epochs(config) > 0


@pytest.mark.parametrize("name", ["sign-in-imagenet-resnet50", "sign-in-imagenet-resnet50-dst"])
def test_imagenet_sign_in_tables_put_paper_numbers_beside_their_own_arms(name):
    """Every paper number sits on an arm the table runs, at one of its sparsities, and every
    arm is the experiment's (a typo would silently drop a paper column)."""
    from signticket.experiments import sign_in

    config = suite.load_config(suite.get_table(name).config_file("paper"))
    exp = config.experiment
    assert set(exp.arms) <= set(sign_in.ARMS)
    assert exp.paper and set(exp.paper) <= set(exp.arms)
    cells = {f"{round(100 * s)}" for s in exp.sparsities}
    assert all(set(row) <= cells for row in exp.paper.values())
    assert (config.model.name, config.data.name, config.data.image_size) == (
        "resnet50", "imagenet2012", 224)


def test_tables_with_nothing_finished_fails_clearly(tmp_path, capsys):
    assert cli.main(["tables", "--results", str(tmp_path)]) == 1
    assert "no finished results" in capsys.readouterr().err


def test_table_only_without_results_names_the_problem(tmp_path, capsys):
    from signticket.experiments import sign_in

    with pytest.raises(SystemExit) as e:
        sign_in.main(["--config", str(suite.CONFIG_DIR / "quickstart_sign_in.py"),
                      "--out", str(tmp_path / "none"), "--table-only"])
    assert e.value.code == 2
    assert "no finished results" in capsys.readouterr().err


def test_no_space_left_is_one_clear_line(monkeypatch, tmp_path, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ckpt"))

    monkeypatch.setattr(suite, "quickstart", full)
    assert cli.main(["quickstart", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no space left" in err and "re-run" in err
