"""The permuted-mask procedure on a tiny synthetic dataset: rewind points are the weights after
exactly k epochs, IMP hits every target sparsity exactly with nested masks and reuses finished
rounds, and each sparse method starts from the right weights and mask."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_dataset
from test_rebasin import random_variables

from experiments.configs.permuted_common import base, sgd
from signticket import masks, models
from signticket.checkpoint import Checkpointer
from signticket.rebasin import apply_permutation, random_perms, spec_for
from signticket.rebasin import procedure as proc


def _dataset():
    return synthetic_dataset(n=64, n_test=32)


def _config(**kw):
    c = base(model="mlp", model_kwargs={"widths": (8, 8)}, dataset="synthetic",
             optimizer=sgd(0.05, 5e-4), dense_epochs=2, rewind_epochs=(0, 1),
             ft_optimizer=sgd(0.01, 5e-4), ft_epochs=1, sparse_optimizer=sgd(0.05, 5e-4),
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
        pruned, total = proc._prunable_counts(m)
        assert pruned == round(t * total)
        assert all(bool(jnp.all(x)) for x in (m["head"]["kernel"], m["fc0"]["bias"]))
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
