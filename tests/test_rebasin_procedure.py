"""The permuted-mask procedure on a tiny synthetic dataset: rewind points are the weights after
exactly k epochs (or k + 1 under the official convention), IMP hits every target sparsity
exactly over the official pruned set with nested masks and reuses finished rounds, each sparse
method starts from the right weights and mask, and the paper configs carry the official
protocol (docs/protocols/permuted_masks.md)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_dataset
from test_rebasin import random_variables

from signticket import lottery, masks, models
from signticket.checkpoint import Checkpointer
from signticket.experiments.configs import (
    permuted_cifar10_resnet20,
    permuted_cifar10_vgg11,
    permuted_cifar100_resnet20,
    permuted_fmnist_mlp,
    permuted_imagenet_resnet50,
)
from signticket.experiments.configs.permuted_common import base, imp_ft_sgd, sgd
from signticket.rebasin import apply_permutation, random_perms, spec_for
from signticket.rebasin import procedure as proc
from signticket.rebasin.prune_scope import sparse_rebasin_prunable
from signticket.tree import is_prunable, named_leaves


def _dataset():
    return synthetic_dataset(n=64, n_test=32)


def _config(**kw):
    c = base(model="mlp", model_kwargs={"widths": (8, 8)}, dataset="synthetic",
             optimizer=sgd(0.05, 5e-4), dense_epochs=2, rewind_epochs=(0, 1),
             ft_optimizer=imp_ft_sgd(0.01, 1), ft_epochs=1, sparse_optimizer=sgd(0.05, 5e-4),
             sparsities=(0.6, 0.9), seeds=(0,), batch_size=16)
    c.imp.fraction = 0.5  # few rounds: 0.5, 0.75, 0.875, then the 0.9 cut
    c.update(kw)
    return c


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    config, dataset = _config(), _dataset()
    run = proc.dense_run(config, dataset, seed=0, name="pm-dense", runs_root=root,
                         progress=False)
    return config, dataset, root, run


def test_rewind_point_is_the_state_after_exactly_k_epochs(dense):
    _, _, _, run = dense
    ckpt = Checkpointer(run.directory)  # keeps the 2 newest epochs: 1 and 2
    try:
        _, state = ckpt.restore(template_state(run), step=1)
    finally:
        ckpt.close()
    chex.assert_trees_all_equal(run.rewind[1]["params"], state.params)
    # ... and not the final (epoch 2) weights.
    assert not np.allclose(run.rewind[1]["params"]["fc0"]["kernel"],
                           run.final["params"]["fc0"]["kernel"])
    with pytest.raises(ValueError, match=r"rewind epochs \[0, 2\] must lie in \[0, dense_epochs"):
        proc.dense_run(_config(rewind_epochs=(0, 2)), _dataset(), seed=0, name="x",
                       runs_root="/nonexistent", progress=False)


def test_official_rewind_k_is_the_checkpoint_after_k_plus_one_epochs(dense):
    """sparse-rebasin's trainer saves ``_epoch_{e}`` after 0-based epoch e (training.py lines
    48-51) and ``--rewind k`` loads ``_epoch_k`` (experiment.py line 256): k + 1 epochs."""
    config, dataset, root, exact = dense
    official = _config(rewind_convention="official")
    run = proc.dense_run(official, dataset, seed=0, name="pm-dense", runs_root=root,
                         progress=False)
    chex.assert_trees_all_equal(run.rewind[0], exact.rewind[1])  # k=0: after one epoch
    chex.assert_trees_all_equal(run.rewind[1], exact.final)  # k=1: after two
    chex.assert_trees_all_equal(run.final, exact.final)  # the same dense training
    assert [proc.rewind_epoch(official, k) for k in (0, 5)] == [1, 6]
    assert [proc.rewind_epoch(config, k) for k in (0, 5)] == [0, 5]
    with pytest.raises(ValueError, match="unknown rewind_convention 'paper'"):
        proc.rewind_epoch(_config(rewind_convention="paper"), 1)


def template_state(run):
    """A TrainState shaped like the dense run's checkpoints."""
    from signticket.runs import build_optimizer
    from signticket.train import Engine

    config, dataset = _config(), _dataset()
    model = models.get("mlp", 10, widths=(8, 8))
    tx = build_optimizer(config.optimizer, config.dense_epochs, 4)
    engine = Engine(model, tx, dataset.preprocess)
    return engine.init_state(jax.random.PRNGKey(0), dataset.train_images[:1],
                             params=run.final["params"], batch_stats=run.final["batch_stats"])


def test_imp_hits_each_target_exactly_with_nested_masks_and_reuses_rounds(dense):
    config, dataset, root, run = dense
    imp = proc.imp_masks(config, dataset, run, (0.9, 0.6), seed=0, runs_root=root,
                         progress=False)
    assert imp.rounds == 3
    for t, m in imp.masks.items():
        pruned, total = proc._prunable_counts(m, sparse_rebasin_prunable)
        # The official set counts the head: every kernel, so the sparsity is over all of them.
        assert total == sum(m[k]["kernel"].size for k in ("fc0", "fc1", "head"))
        assert pruned == round(t * total)
        assert all(bool(jnp.all(m[k]["bias"])) for k in ("fc0", "fc1", "head"))
    m6, m9 = imp.masks[0.6], imp.masks[0.9]
    assert all(bool(jnp.all(b <= a)) for a, b in zip(jax.tree.leaves(m6), jax.tree.leaves(m9),
                                                     strict=True))
    again = proc.imp_masks(config, dataset, run, (0.6, 0.9), seed=0, runs_root=root,
                           progress=False)
    chex.assert_trees_all_equal(again.masks, imp.masks)
    assert again.sources == imp.sources


def test_sparse_methods_start_from_the_right_weights_and_masks():
    model = models.get("mlp", 10, widths=(8, 8), batch_norm=True)
    va, vb = random_variables(model, (1, 8, 8, 1), 1), random_variables(model, (1, 8, 8, 1), 2)
    a = proc.DenseRun(None, va, {1: va}, {})
    b = proc.DenseRun(None, vb, {1: vb}, {})
    spec = spec_for("mlp", va)
    mask = masks.magnitude_prune(va["params"], masks.full_mask(va["params"]), 0.7)
    pi, rho = random_perms(jax.random.PRNGKey(1), spec), random_perms(jax.random.PRNGKey(2), spec)
    expected = {"lth": (va, mask), "naive": (vb, mask),
                "permuted": (vb, apply_permutation(spec, pi, mask)),
                "random": (vb, apply_permutation(spec, rho, mask))}
    for method, (src, m) in expected.items():
        params, stats, got = proc.sparse_init(method, a, b, 1, mask, pi, rho, spec)
        chex.assert_trees_all_equal(got, m)
        chex.assert_trees_all_equal(params, masks.apply_mask(src["params"], m))
        chex.assert_trees_all_equal(stats, src["batch_stats"])
    with pytest.raises(ValueError, match="unknown method 'lottery'"):
        proc.sparse_init("lottery", a, b, 1, mask, pi, rho, spec)


def test_imp_prunes_the_official_set_head_in_and_shortcuts_out(tmp_path):
    """pruning.py lines 32-36: every Conv2d / Linear except ``shortcut`` modules."""
    model = models.get("resnet20_rebasin", 10)
    v = random_variables(model, (1, 32, 32, 3))
    full = masks.full_mask(v["params"])
    _, total = proc._prunable_counts(full, sparse_rebasin_prunable)
    # The one IMP driver's pruning step under imp.prune_scope="sparse_rebasin" (keep_dense=()).
    mask = lottery.prune_round(v["params"], full, 0.0, prunable="sparse_rebasin",
                               kept=total - 20_000)
    pruned = {p.rsplit("/", 1)[0]: int((~np.asarray(m)).sum())
              for p, m in named_leaves(mask) if not np.all(m)}
    assert sum(pruned.values()) == 20_000
    assert "head" in pruned
    assert not any("shortcut" in p for p in pruned)
    # The library default (head dense) stays available as imp.prune_scope="no_head".
    assert not is_prunable("head/kernel") and sparse_rebasin_prunable("head/kernel")
    assert not sparse_rebasin_prunable("stage1_block0/shortcut_conv/kernel")
    assert not sparse_rebasin_prunable("stage1_block0/bn1/scale")


@pytest.mark.parametrize("get_config,model", [
    (permuted_cifar10_resnet20.get_config, "resnet20_rebasin"),
    (permuted_cifar100_resnet20.get_config, "resnet20_rebasin"),
    (permuted_cifar10_vgg11.get_config, "vgg11_nofc"),
])
def test_paper_configs_carry_the_official_protocol(get_config, model):
    c = get_config()
    assert c.model.name == model
    # Dense and sparse: SGD momentum 0.9, wd 5e-4, cosine (training.py trainer, config yaml).
    for opt, lr in ((c.optimizer, 0.08), (c.sparse.optimizer, 0.02)):
        assert (opt.name, opt.learning_rate, opt.momentum, opt.weight_decay, opt.schedule) == (
            "sgd", lr, 0.9, 5e-4, "cosine")
    # IMP-FT: plain SGD at prune_lr, fresh cosine over train_epochs_per_prune (pruning.py 49-55).
    ft = c.imp.ft_optimizer
    assert (ft.learning_rate, ft.momentum, ft.weight_decay, ft.schedule) == (
        0.01, 0.0, 0.0, "cosine")
    assert (c.imp.mode, c.imp.fraction, c.imp.ft_epochs) == ("ft", 0.2, 50)
    assert c.imp.prune_scope == "sparse_rebasin"
    assert (c.dense_epochs, c.batch_size, c.rewind_convention) == (200, 128, "official")
    m = c.matching
    assert (m.method, m.batches, m.augment, m.stream_sites, m.batch_size) == (
        "activation", 0, True, "sparse_rebasin", 128)


def _lr_per_epoch(opt, epochs, steps=10):
    from signticket.runs import build_schedule

    sched = build_schedule(opt, epochs, steps)
    return np.array([float(sched(e * steps + steps - 1)) for e in range(epochs)])


def test_imagenet_config_carries_the_official_resnet50_protocol():
    """resnet50_src/: dense 90 epochs of SGD 0.9 / wd 1e-4 at set_lr(ep) / 10 (lr 0.04 after a
    5-epoch warm-up, x0.1 after epochs 30 and 61), IMP-FT 20 epochs at 0.002 per level,
    activation matching over 100 augmented batches of 256, sparse runs from the official
    rewind point with the same schedule restarted."""
    c = permuted_imagenet_resnet50.get_config()
    assert (c.model.name, c.data.name, c.data.image_size, c.batch_size) == (
        "resnet50_wide", "imagenet2012", 224, 256)
    assert (c.dense_epochs, c.rewind_epochs, c.rewind_convention) == (90, (10,), "official")
    for opt, epochs in ((c.optimizer, 90), (c.sparse.optimizer, 80)):
        assert (opt.name, opt.momentum, opt.weight_decay) == ("sgd", 0.9, 1e-4)
        lr = _lr_per_epoch(opt, epochs)
        # After warm-up: 0.04 through epoch 30, 0.004 through 61, then 0.0004 (1-based).
        np.testing.assert_allclose(lr[5:30], 0.04, rtol=1e-6)
        np.testing.assert_allclose(lr[30:61], 0.004, rtol=1e-6)
        np.testing.assert_allclose(lr[61:], 0.0004, rtol=1e-6)
        assert np.all(np.diff(lr[:5]) > 0) and lr[4] <= 0.04
    ft = c.imp.ft_optimizer
    assert (ft.learning_rate, ft.momentum, ft.weight_decay, ft.schedule) == (
        0.002, 0.9, 1e-4, "constant")
    assert (c.imp.mode, c.imp.fraction, c.imp.ft_epochs, c.imp.prune_scope) == (
        "ft", 0.2, 20, "sparse_rebasin")
    m = c.matching
    assert (m.method, m.batches, m.batch_size, m.augment, m.stream_sites) == (
        "activation", 100, 256, True, "last")
    assert c.experiment.sparsities == (0.8, 0.9, 0.95)


def test_cpu_config_uses_the_fixed_imp_protocol():
    c = permuted_fmnist_mlp.get_config()
    assert (c.imp.ft_optimizer.momentum, c.imp.ft_optimizer.weight_decay) == (0.0, 0.0)
    # One epoch per round: the official per-epoch CosineAnnealingLR(T=1) is a constant lr.
    assert (c.imp.ft_epochs, c.imp.ft_optimizer.schedule) == (1, "constant")
    assert c.imp.prune_scope == "sparse_rebasin"
    assert c.matching.method == "activation"


def test_matching_batches_are_one_epoch_with_the_last_partial_batch_dropped():
    config, dataset = _config(), _dataset()  # 64 examples, batch 16
    config.matching.batch_size = 24
    batches = list(proc._matching_batches(config, dataset, seed=0))
    assert len(batches) == 64 // 24 and all(b.shape[0] == 24 for b in batches)
    config.matching.batches = 1
    assert len(list(proc._matching_batches(config, dataset, seed=0))) == 1


def test_run_seed_side_by_side_equals_one_after_another_with_stable_run_names(tmp_path):
    """experiment.lockstep trains dense A and B, and a cell's four sparse runs, side by side:
    every accuracy is bit-identical to training them one after another, and both roots hold
    the same run directories (the permuted runs are named by the matching's inputs, not by
    how long it took)."""
    config = _config(rewind_epochs=(1,))
    config.experiment.sparsities = (0.9,)
    dataset = _dataset()
    results, names = [], []
    for lockstep in (1, 4):
        config.experiment.lockstep = lockstep
        root = tmp_path / f"lockstep{lockstep}"
        result = proc.run_seed(config, dataset, 0, runs_root=root, progress=False)
        assert result["matching"].pop("seconds") >= 0
        results.append(result)
        names.append(sorted(p.name for p in root.iterdir()))
    assert results[0] == results[1]
    assert set(results[0]["sparse"]["0.9"]["1"]) == {"lth", "naive", "permuted", "random"}
    assert names[0] == names[1]
    assert any(n.startswith("pm-sparse-permuted") for n in names[0])
