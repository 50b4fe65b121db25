"""The composed-methods experiment end to end on a tiny synthetic dataset: every arm trains to a
valid accuracy with its pruned entries exactly zero, the sign transfer across the permutation
puts pi(A)'s signs on B's magnitudes, the AWS SGD arm is exactly ``lottery.final_run``, and a
second pass reuses every finished run."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_dataset

from signticket import lottery
from signticket.checkpoint import DONE_FILE, config_hash
from signticket.experiments import composed
from signticket.experiments.configs.composed_cpu import base
from signticket.experiments.configs.composed_cpu import get_config as cpu_config
from signticket.rebasin import apply_permutation
from signticket.tree import is_kernel, is_norm, named_leaves


def _config():
    # Tiny BN convnet (so AWS's norm interpolation and BN statistics are exercised), 1 seed,
    # every arm; 50 % per round reaches 60 % sparsity in one trained IMP round per pipeline.
    c = base(model="convnet", model_kwargs={"channels": (4, 8)}, dataset="synthetic",
             train_subset=0, test_subset=0, batch_size=16, seeds=(0,), aws_warmup=1,
             aws_rounds=2, aws_final_epochs=1, dense_epochs=2, rewind_epoch=1, fraction=0.5,
             sparsity=0.6)
    # One optimizer for every 1-epoch run (AWS tickets, IMP fine-tuning, sparse runs): they
    # then share one cached engine, i.e. one compilation, which keeps the test fast.
    c.aws.final.optimizer = c.permuted.imp.ft_optimizer = c.permuted.sparse.optimizer
    return c


def _dataset():
    return synthetic_dataset(n=96, n_test=48)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    config, dataset = _config(), _dataset()
    result = composed.run_seed(config, dataset, 0, runs_root=root, progress=False)
    return config, dataset, root, result


def test_every_arm_trains_in_its_own_finished_run_with_pruned_entries_zero(pipeline):
    config, _, _, result = pipeline
    assert list(result["arms"]) == list(config.experiment.arms) == list(composed.ARMS)
    dirs = {r["dir"] for r in result["arms"].values()}
    assert len(dirs) == len(composed.ARMS)  # distinct configs: no two arms share a run
    for arm, r in result["arms"].items():
        assert 0.0 <= r["test_accuracy"] <= 1.0, arm
        assert r["masked_nonzero"] == 0, arm  # masked SGD and Sign-In keep pruned weights at 0
        assert (Path(r["dir"]) / DONE_FILE).exists(), arm
    assert result["aws"]["round"] == 2
    assert result["aws"]["remaining"] == pytest.approx(0.25, abs=0.01)
    assert result["permuted"]["sparsity"] == 0.6 and result["permuted"]["k"] == 1


def test_arm_configs_are_distinct_and_name_their_sign_in_settings():
    config = _config()
    kw = dict(seed=0, init_seed=0, epochs=1, optimizer=config.permuted.sparse.optimizer)
    cfgs = {arm: composed.arm_config(config, arm, **kw) for arm in composed.ARMS}
    assert len({config_hash(c) for c in cfgs.values()}) == len(cfgs)
    assert cfgs["permuted_sign_in"].method.reset_epochs == config.sign_in.reset_epochs
    assert cfgs["permuted"].method.sign_in is False and cfgs["permuted"].method.c is None
    bad = _config()
    bad.experiment.arms = ("permuted", "nope")
    with pytest.raises(ValueError, match="unknown arm"):
        composed.run_seed(bad, _dataset(), 0, runs_root="/nonexistent", progress=False)


def _sign(x):
    return np.where(np.asarray(x) >= 0, 1, -1)  # signticket.signs.sign: zero counts as +


def test_sign_transfer_across_the_permutation(pipeline):
    config, dataset, root, _ = pipeline
    setup = composed.permuted_setup(config, dataset, 0, runs_root=root, progress=False)
    assert any(n > 0 for n in setup.info["matching"]["moved_units"].values())
    params, stats, mask = composed.permuted_init("permuted_signs", setup)
    pi_a = dict(named_leaves(apply_permutation(setup.spec, setup.pi, setup.a.final["params"])))
    a_t = dict(named_leaves(setup.a.final["params"]))
    b_k = dict(named_leaves(setup.b.rewind[setup.k]["params"]))
    pi_mask = dict(named_leaves(apply_permutation(setup.spec, setup.pi, setup.mask)))
    got_mask = dict(named_leaves(mask))
    unpermuted_differs = False
    for name, x in named_leaves(params):
        m = np.asarray(got_mask[name])
        np.testing.assert_array_equal(m, np.asarray(pi_mask[name]))
        if is_kernel(name):
            x = np.asarray(x)
            np.testing.assert_array_equal(_sign(x)[m], _sign(pi_a[name])[m])
            np.testing.assert_array_equal(np.abs(x)[m], np.abs(np.asarray(b_k[name]))[m])
            assert np.all(x[~m] == 0)
            unpermuted_differs |= bool(np.any(_sign(pi_a[name])[m] != _sign(a_t[name])[m]))
        elif is_norm(name):
            np.testing.assert_array_equal(x, b_k[name])  # norm params are B_k's, untouched
    assert unpermuted_differs  # the permutation changed which signs land where
    jax.tree.map(np.testing.assert_array_equal, stats, setup.b.rewind[setup.k]["batch_stats"])
    # The naive control takes A's signs unpermuted on the unpermuted mask.
    params, _, mask = composed.permuted_init("naive_signs", setup)
    for (name, x), (_, m) in zip(named_leaves(params), named_leaves(mask), strict=True):
        if is_kernel(name):
            m = np.asarray(m)
            np.testing.assert_array_equal(_sign(x)[m], _sign(a_t[name])[m])
            np.testing.assert_array_equal(np.abs(np.asarray(x))[m],
                                          np.abs(np.asarray(b_k[name]))[m])


def test_aws_sgd_arm_is_exactly_lottery_final_run(pipeline):
    config, dataset, root, result = pipeline
    acfg = composed.aws_config(config, 0)
    rounds = lottery.imp(acfg, dataset, runs_root=root, progress=False)  # reused, not retrained
    ref = lottery.final_run("sign_transfer", rounds[-1], acfg, dataset,
                            init_seed=config.aws.transfer_seed, runs_root=root, progress=False)
    assert str(ref.directory) != result["arms"]["aws_st"]["dir"]
    assert ref.summary["test_accuracy"] == result["arms"]["aws_st"]["test_accuracy"]


def _metrics_files(root: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.glob("*/metrics.jsonl")}


def test_second_pass_reuses_every_finished_run(pipeline):
    config, dataset, root, result = pipeline
    before_dirs = sorted(p.name for p in root.iterdir())
    before = _metrics_files(root)
    again = composed.run_seed(config, dataset, 0, runs_root=root, progress=False)
    assert again == result
    assert sorted(p.name for p in root.iterdir()) == before_dirs  # no new runs
    assert _metrics_files(root) == before  # no run trained (or rewrote) a single epoch


def test_report_writes_a_well_formed_table_and_figure(pipeline, tmp_path):
    config, _, _, result = pipeline
    results = [result, {**result, "seed": 1}]  # two "seeds" exercise mean ± std
    markdown, figures = composed.report(config, results, tmp_path, "Composed — test")
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(composed.ARMS)
    assert len({line.count("|") for line in rows}) == 1  # no label breaks the columns
    assert "1b: AWS sign transfer + Sign-In" in markdown and "± 0.00" in markdown
    assert (tmp_path / "table.csv").exists() and (tmp_path / "table.md").exists()
    assert figures == [tmp_path / "accuracy.png"] and figures[0].stat().st_size > 0


def test_training_epochs_counts_the_cpu_config():
    # per seed: AWS 1 + 8 rounds + 2 tickets x 5; permuted 2 x 4 dense + 9 IMP rounds (estimate)
    # + 7 arms x (4 - 1)
    assert composed.training_epochs(cpu_config()) == 3 * (1 + 8 + 2 * 5 + 2 * 4 + 9 + 7 * 3)
    assert jnp.isfinite(composed.training_epochs(_config()))
