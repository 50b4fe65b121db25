"""Weight matching and activation matching: exact recovery of known permutations, optimality,
zero barrier after alignment, and clear errors for mismatched models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_rebasin import MODELS, permute_variables, random_variables

from signticket import lmc, models
from signticket.models.resnet_cifar import CifarResNet
from signticket.rebasin import (
    PermutationSpec,
    activation_matching,
    activation_stats,
    apply_permutation,
    compose,
    identity_perms,
    invert,
    random_perms,
    spec_for,
    weight_matching,
)
from signticket.rebasin.resnet_specs import with_stream_sites


def objective(spec, perms, params_a, params_b):
    """``sum_l <W_l^A, pi(W_l^B)>`` computed the slow, obvious way."""
    pb = apply_permutation(spec, perms, params_b)
    return sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(params_a),
                                                     jax.tree.leaves(pb), strict=True))


@pytest.mark.parametrize("name", ["mlp", "resnet20", "vgg_bn"])
def test_weight_matching_recovers_a_random_permutation_exactly(name):
    model, spec_name, shape = MODELS[name]
    v = random_variables(model, shape)
    spec = spec_for(spec_name, v)
    secret = random_perms(jax.random.PRNGKey(11), spec)
    vb = permute_variables(spec, secret, v)
    found = weight_matching(jax.random.PRNGKey(0), spec, v["params"], vb["params"])
    chex.assert_trees_all_equal(found, invert(secret))
    # Aligned B is A itself, so every point of the linear path is A: zero barrier.
    aligned = permute_variables(spec, found, vb)
    chex.assert_trees_all_equal(aligned, v)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    apply = jax.jit(lambda v: model.apply(v, x))
    mid = apply(lmc.interpolate(v, aligned, 0.5))
    chex.assert_trees_all_close(mid, apply(v), atol=1e-6)
    assert not np.allclose(apply(lmc.interpolate(v, vb, 0.5)), apply(v), atol=1e-3)


def test_weight_matching_of_independent_models_is_a_coordinatewise_optimum():
    model, _, shape = MODELS["mlp_bn"]
    va, vb = random_variables(model, shape, seed=1), random_variables(model, shape, seed=2)
    spec = spec_for("mlp", va)
    found = weight_matching(jax.random.PRNGKey(0), spec, va["params"], vb["params"])
    best = objective(spec, found, va["params"], vb["params"])
    assert best > objective(spec, identity_perms(spec), va["params"], vb["params"]) + 1e-3
    # Converged: no single transposition of any permutation improves the objective (checked
    # against the brute-force objective, so a wrong cost matrix would fail here).
    rng = np.random.default_rng(0)
    for p in spec.names:
        for _ in range(5):
            i, j = rng.choice(spec.sizes[p], 2, replace=False)
            swapped = dict(found)
            swapped[p] = found[p].at[jnp.array([i, j])].set(found[p][jnp.array([j, i])])
            assert objective(spec, swapped, va["params"], vb["params"]) <= best + 1e-4
    # Matching is consistent under relabelling B: permuting B first composes with the answer.
    secret = random_perms(jax.random.PRNGKey(3), spec)
    relabelled = weight_matching(jax.random.PRNGKey(0), spec, va["params"],
                                 apply_permutation(spec, secret, vb["params"]),
                                 init_perms=compose(invert(secret), found))
    chex.assert_trees_all_equal(compose(secret, relabelled), found)


@pytest.mark.parametrize("name", ["mlp_bn", "convnet"])
def test_activation_matching_recovers_a_random_permutation_exactly(name):
    model, spec_name, shape = MODELS[name]
    v = random_variables(model, shape)
    spec = spec_for(spec_name, v)
    secret = random_perms(jax.random.PRNGKey(5), spec)
    vb = permute_variables(spec, secret, v)
    batches = [jax.random.normal(jax.random.PRNGKey(i), (64, *shape[1:])) for i in range(2)]
    found = activation_matching(spec, model, v, vb, batches)
    chex.assert_trees_all_equal(found, invert(secret))


def test_activation_matching_on_a_resnet_reaches_the_true_alignment_score():
    """Residual streams sum correlations over every block writing them; dead units may tie,
    so the test asserts optimality: the matched score equals the true permutation's."""
    model, spec_name, shape = MODELS["resnet20"]
    v = random_variables(model, shape)
    spec = spec_for(spec_name, v)
    secret = random_perms(jax.random.PRNGKey(5), spec)
    vb = permute_variables(spec, secret, v)
    batches = [jax.random.normal(jax.random.PRNGKey(i), (32, *shape[1:])) for i in range(2)]
    corr = activation_stats(spec, model, v, vb, batches)
    found = activation_matching(spec, model, v, vb, batches)
    truth = invert(secret)
    for p in spec.names:
        rows = np.arange(spec.sizes[p])
        assert corr[p][rows, np.asarray(found[p])].sum() == pytest.approx(
            corr[p][rows, np.asarray(truth[p])].sum(), abs=1e-6)
    assert len(spec.activations["residual1"]) == 1  # one block per stage in this model


def test_sparse_rebasin_stream_sites_are_the_official_blocks_and_still_recover_alignment():
    """act_matching_resnet20.py observes each residual stream once, after blocks[:kk + 1] of
    [stem, *blocks] with kk = [3, 6, 8]: layer1[2], layer2[2] and layer3[1] on ResNet-20."""
    full = models.get("resnet20_rebasin", 10)
    v = jax.eval_shape(lambda: models.init_variables(full, jax.random.PRNGKey(0), (1, 32, 32, 3)))
    spec = spec_for("resnet20_rebasin", v)
    one = with_stream_sites(spec, "sparse_rebasin")
    assert {p: [s.module for s in one.activations[p]] for p in ("residual0", "residual1",
                                                                "residual2")} == {
        "residual0": [("stage0_block2",)], "residual1": [("stage1_block2",)],
        "residual2": [("stage2_block1",)]}
    assert len(spec.activations["residual0"]) == 4  # "all": the stem and three blocks
    inner = [p for p in spec.names if not p.startswith("residual")]
    assert all(one.activations[p] == spec.activations[p] for p in inner)
    assert with_stream_sites(spec, "all") is spec
    with pytest.raises(ValueError, match="unknown stream sites 'every'"):
        with_stream_sites(spec, "every")

    # With one site per stream the matching still reaches the true permutation's score.
    model = CifarResNet(stage_sizes=(2, 2, 2), widths=(6, 8, 8), shortcut_kernel=3)
    shape = (2, 8, 8, 3)
    va = random_variables(model, shape)
    spec = with_stream_sites(spec_for("resnet20_rebasin", va), "sparse_rebasin")
    secret = random_perms(jax.random.PRNGKey(5), spec)
    vb = permute_variables(spec, secret, va)
    batches = [jax.random.normal(jax.random.PRNGKey(i), (32, *shape[1:])) for i in range(2)]
    corr = activation_stats(spec, model, va, vb, batches)
    found, truth = activation_matching(spec, model, va, vb, batches), invert(secret)
    for p in spec.names:
        rows = np.arange(spec.sizes[p])
        assert corr[p][rows, np.asarray(found[p])].sum() == pytest.approx(
            corr[p][rows, np.asarray(truth[p])].sum(), abs=1e-6)


def test_last_stream_sites_are_sparse_rebasin_s_resnet50_blocks():
    """resnet50_w2_matching.py get_permk: each residual stream after [stem, *blocks][:kk + 1],
    kk = 0, 3, 7, 13, 16: the stem (its own stream: layer1[0] has a projection shortcut) and
    the last block of every stage, the final one included. (Matching over one site per stream
    reaches the true alignment: the ResNet-20 test above.)"""
    full = models.get("resnet50", 10)
    v = jax.eval_shape(lambda: models.init_variables(full, jax.random.PRNGKey(0), (1, 64, 64, 3)))
    spec = spec_for("resnet50", v)
    last = with_stream_sites(spec, "last")
    assert {p: [s.module for s in last.activations[p]] for p in last.names
            if p.startswith("residual")} == {
        "residual0": [("stem_bn",)], "residual1": [("stage0_block2",)],
        "residual2": [("stage1_block3",)], "residual3": [("stage2_block5",)],
        "residual4": [("stage3_block2",)]}
    inner = [p for p in spec.names if not p.startswith("residual")]
    assert all(last.activations[p] == spec.activations[p] for p in inner)
    # ResNet-20's choice has no block to pick for ResNet-50's stem stream.
    with pytest.raises(ValueError, match="residual0"):
        with_stream_sites(spec, "sparse_rebasin")


# -- bad input ------------------------------------------------------------------------------


def test_matching_models_of_different_width_or_architecture_is_rejected():
    model, _, shape = MODELS["mlp"]
    v = random_variables(model, shape)
    spec = spec_for("mlp", v)
    wide = random_variables(models.get("mlp", 10, widths=(16, 24)), shape)
    deep = random_variables(models.get("mlp", 10, widths=(16, 16, 16)), shape)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"different widths: 'fc1/bias' has shape \(16,\) in A"):
        weight_matching(key, spec, v["params"], wide["params"])
    with pytest.raises(ValueError, match=r"different architectures.*only in B: \['fc2/bias'"):
        weight_matching(key, spec, v["params"], deep["params"])
    with pytest.raises(ValueError, match=r"different widths"):
        activation_matching(spec, model, v, wide, [jnp.zeros(shape)])
    with pytest.raises(ValueError, match=r"max_iter must be >= 1"):
        weight_matching(key, spec, v["params"], v["params"], max_iter=0)


def test_activation_matching_needs_sites_for_every_permutation():
    model, _, shape = MODELS["mlp"]
    v = random_variables(model, shape)
    spec = spec_for("mlp", v)
    bare = PermutationSpec(spec.axes, spec.sizes)
    with pytest.raises(ValueError, match=r"no activation site for permutations \['fc0', 'fc1'\]"):
        activation_matching(bare, model, v, v, [jnp.zeros(shape)])
    with pytest.raises(ValueError, match=r"no batches"):
        activation_matching(spec, model, v, v, [])


@pytest.mark.parametrize("name", ["resnet20", "bottleneck"])
def test_weight_matching_equals_a_loop_that_solves_every_permutation_every_sweep(name):
    # weight_matching skips a permutation when nothing it depends on changed since its last
    # visit; bench's naive loop rebuilds everything and solves every permutation every sweep.
    # With the same sweep order and acceptance rule they must end at the same permutations.
    from bench.matching import naive_weight_matching

    model, spec_name, shape = MODELS[name]
    va, vb = random_variables(model, shape, seed=1), random_variables(model, shape, seed=2)
    spec = spec_for(spec_name, va)
    key = jax.random.PRNGKey(5)
    found = weight_matching(key, spec, va["params"], vb["params"])
    naive, sweeps = naive_weight_matching(key, spec, va["params"], vb["params"])
    assert sweeps > 1  # a case where later sweeps have something to skip
    chex.assert_trees_all_equal({p: np.asarray(v) for p, v in found.items()}, naive)
