"""Permutation specs and applying permutations: function preservation, inverses, masks,
optimizer states, and clear errors on bad specs / permutations."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from signticket import masks, models, optim
from signticket.models.resnet_cifar import CifarResNet
from signticket.models.resnet_imagenet import ResNet
from signticket.models.vgg import VGG
from signticket.rebasin import (
    PermutationSpec,
    apply_permutation,
    check_perms,
    compose,
    identity_perms,
    invert,
    mlp_spec,
    random_perms,
    spec_for,
)
from signticket.train import TrainState

# name -> (module, spec registry name, input shape). Small widths keep compile times low.
MODELS = {
    "mlp": (models.get("mlp", 10, widths=(16, 16)), "mlp", (4, 6, 6, 1)),
    "mlp_bn": (models.get("mlp", 10, widths=(16, 16), batch_norm=True), "mlp", (4, 6, 6, 1)),
    "convnet": (models.get("convnet", 10, channels=(4, 8, 8)), "convnet", (4, 8, 8, 1)),
    # One BasicBlock per stage: the same code paths as ResNet-20 (projection shortcuts at the
    # stage changes), a third of the compile time; full ResNet-20 specs are checked below.
    "resnet20": (CifarResNet(stage_sizes=(1, 1, 1), widths=(6, 8, 8)), "resnet20", (2, 8, 8, 3)),
    # sparse-rebasin's variant: 3x3 stride-2 projection shortcuts.
    "resnet20_rebasin": (CifarResNet(stage_sizes=(1, 1, 1), widths=(6, 8, 8), shortcut_kernel=3,
                                     head_bias_init="torch"), "resnet20_rebasin", (2, 8, 8, 3)),
    "vgg": (VGG(cfg=(8, "M", 16, 16, "M", 16), batch_norm=False), "vgg11", (2, 8, 8, 3)),
    "vgg_bn": (VGG(cfg=(8, "M", 16, 16, "M", 16), batch_norm=True), "vgg11_bn", (2, 8, 8, 3)),
    "vgg_nofc": (VGG(cfg=(8, "M", 16, 16, "M", 16), weight_init="torch"), "vgg11_nofc",
                 (2, 8, 8, 3)),
    "bottleneck": (ResNet(stage_sizes=(1, 1), widths=(6, 8), num_classes=10), "resnet50",
                   (2, 8, 8, 3)),
}


def random_variables(model, shape, seed=0):
    """Variables with *every* leaf random (BN scale/bias/mean/var too, so a wrongly permuted
    norm leaf changes the output; variances positive), drawn from the init's shapes without
    running (or compiling) the init."""
    abstract = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), shape))
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    rng = np.random.default_rng(seed)  # numpy: no per-shape compiles of jax.random kernels
    out = []
    for path, x in flat:
        name = jax.tree_util.keystr(path)
        if "'var'" in name:
            value = rng.uniform(0.5, 1.5, x.shape)
        elif "'scale'" in name:
            value = 1.0 + 0.3 * rng.standard_normal(x.shape)
        elif len(x.shape) <= 1:
            value = 0.1 * rng.standard_normal(x.shape)
        else:  # He-scaled kernels keep activations O(1) through deep stacks
            value = rng.standard_normal(x.shape) * np.sqrt(2.0 / np.prod(x.shape[:-1]))
        out.append(jnp.asarray(value, jnp.float32))
    return jax.tree.unflatten(treedef, out)


def permute_variables(spec, perms, v):
    return {c: apply_permutation(spec, perms, t) for c, t in v.items()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_permutation_leaves_outputs_unchanged(name):
    model, spec_name, shape = MODELS[name]
    v = random_variables(model, shape)
    spec = spec_for(spec_name, v)
    perms = random_perms(jax.random.PRNGKey(7), spec)
    pv = permute_variables(spec, perms, v)
    x = jax.random.normal(jax.random.PRNGKey(3), shape)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out, pout = apply(v, x), apply(pv, x)
    chex.assert_trees_all_close(pout, out, atol=1e-5, rtol=1e-5)
    # Not vacuous: every permutation moved something, and the weights did change.
    assert all(not np.array_equal(p, np.arange(p.size)) for p in perms.values())
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), v, pv))
    assert sum(changed) >= len(changed) // 2


@pytest.mark.parametrize(
    "name,kwargs,shape",
    [("vgg11", {}, (1, 32, 32, 3)), ("vgg16_bn", {}, (1, 32, 32, 3)),
     ("resnet20", {"width": 4}, (1, 32, 32, 3)), ("resnet18", {}, (1, 32, 32, 3)),
     ("resnet20_rebasin", {"width": 16}, (1, 32, 32, 3)), ("vgg11_nofc", {}, (1, 32, 32, 3)),
     ("resnet50", {}, (1, 64, 64, 3)), ("mlp", {}, (1, 28, 28, 1))],
)
def test_registry_specs_cover_full_size_models(name, kwargs, shape):
    model = models.get(name, 10, **kwargs)
    v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), shape))
    spec = spec_for(name, v)
    spec.check_tree(v["params"])
    spec.check_tree(v["batch_stats"])
    assert set(spec.activations) == set(spec.sizes)


def test_resnet20_spec_ties_residual_streams_and_scales_with_width():
    model = models.get("resnet20", 10, width=4)
    v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), (1, 8, 8, 3)))
    spec = spec_for("resnet20", v)
    ax = spec.axes
    assert spec.sizes["residual0"] == 64 and spec.sizes["residual2"] == 256
    assert sum(p.startswith("residual") for p in spec.sizes) == 3
    assert sum(p.endswith("/inner") for p in spec.sizes) == 9
    assert ax[("stem_conv", "kernel")] == (None, None, None, "residual0")
    assert ax[("stage0_block2", "bn2", "mean")] == ("residual0",)
    assert ax[("stage1_block0", "conv1", "kernel")][2:] == ("residual0", "stage1_block0/inner")
    assert ax[("stage1_block0", "shortcut_conv", "kernel")][2:] == ("residual0", "residual1")
    assert ax[("stage1_block0", "shortcut_bn", "var")] == ("residual1",)
    assert ax[("stage1_block2", "conv2", "kernel")][2:] == ("stage1_block2/inner", "residual1")
    assert ax[("head", "kernel")] == ("residual2", None)


@pytest.fixture(scope="module")
def mlp_bn():
    model, spec_name, shape = MODELS["mlp_bn"]
    v = random_variables(model, shape)
    return spec_for(spec_name, v), v


def test_apply_then_invert_is_identity_and_compose_matches_sequential(mlp_bn):
    spec, v = mlp_bn
    p, q = random_perms(jax.random.PRNGKey(1), spec), random_perms(jax.random.PRNGKey(2), spec)
    mask = masks.magnitude_prune(v["params"], masks.full_mask(v["params"]), 0.5)
    for tree in (v["params"], v["batch_stats"], mask):
        back = apply_permutation(spec, invert(p), apply_permutation(spec, p, tree))
        chex.assert_trees_all_equal(back, tree)
        seq = apply_permutation(spec, q, apply_permutation(spec, p, tree))
        chex.assert_trees_all_equal(apply_permutation(spec, compose(p, q), tree), seq)
    chex.assert_trees_all_equal(compose(p, invert(p)), identity_perms(spec))


def test_permuted_mask_keeps_sparsity_per_layer_and_commutes_with_pruning(mlp_bn):
    spec, v = mlp_bn
    perms = random_perms(jax.random.PRNGKey(4), spec)
    params = v["params"]
    mask = masks.magnitude_prune(params, masks.full_mask(params), 0.9)
    pmask = apply_permutation(spec, perms, mask)
    chex.assert_trees_all_equal(masks.sparsity(pmask).per_layer, masks.sparsity(mask).per_layer)
    assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), mask, pmask)))
    # Magnitude pruning is permutation-equivariant: the permuted mask is exactly the mask of
    # the permuted weights (so it lands on the same weights in the permuted basin).
    mask_of_permuted = masks.magnitude_prune(
        apply_permutation(spec, perms, params), masks.full_mask(params), 0.9
    )
    chex.assert_trees_all_equal(pmask, mask_of_permuted)


def test_optimizer_and_train_state_permute_equivariantly(mlp_bn):
    spec, v = mlp_bn
    model = MODELS["mlp_bn"][0]
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 6, 6, 1))
    y = jnp.arange(8) % 10
    tx = optim.masked_updates(optim.sgd(0.1, momentum=0.9, weight_decay=1e-3))
    mask = masks.magnitude_prune(v["params"], masks.full_mask(v["params"]), 0.5)

    def loss(params, batch_stats):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state, batch_stats):
        grads = jax.grad(loss)(params, batch_stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    stats = v["batch_stats"]
    params, opt_state = v["params"], optim.set_mask(tx.init(v["params"]), mask)
    params, opt_state = step(params, opt_state, stats)  # non-zero momentum
    perms = random_perms(jax.random.PRNGKey(5), spec)
    # Permuting then stepping equals stepping then permuting: momentum and the optimizer's
    # mask moved together with the weights (the loss is permutation invariant).
    a = step(*apply_permutation(spec, perms, (params, opt_state, stats)))
    b = apply_permutation(spec, perms, step(params, opt_state, stats))
    chex.assert_trees_all_close(a, b, atol=1e-6)
    chex.assert_trees_all_equal(optim.get_mask(a[1]), apply_permutation(spec, perms, mask))

    state = TrainState(step=jnp.asarray(3), params=params, batch_stats=v["batch_stats"],
                       opt_state=opt_state, rng=jax.random.PRNGKey(9))
    ps = apply_permutation(spec, perms, state)
    chex.assert_trees_all_equal(ps.params, apply_permutation(spec, perms, params))
    chex.assert_trees_all_equal(ps.batch_stats, apply_permutation(spec, perms, v["batch_stats"]))
    chex.assert_trees_all_equal((ps.step, ps.rng), (state.step, state.rng))


def test_apply_permutation_is_jittable_with_traced_perms(mlp_bn):
    spec, v = mlp_bn
    perms = random_perms(jax.random.PRNGKey(6), spec)
    jitted = jax.jit(lambda p, t: apply_permutation(spec, p, t))
    chex.assert_trees_all_equal(jitted(perms, v["params"]),
                                apply_permutation(spec, perms, v["params"]))


# -- bad input ------------------------------------------------------------------------------


def test_spec_missing_a_leaf_is_rejected(mlp_bn):
    _, v = mlp_bn
    spec_without_bn = mlp_spec({"params": {k: x for k, x in v["params"].items()
                                           if not k.startswith("bn")}})
    with pytest.raises(ValueError, match=r"leaf 'bn0/bias' .* not covered"):
        apply_permutation(spec_without_bn, identity_perms(spec_without_bn), v["params"])
    spec = spec_for("mlp", v)
    with pytest.raises(ValueError, match=r"not to the variables dict"):
        apply_permutation(spec, identity_perms(spec), v)


def test_spec_with_wrong_axis_size_is_rejected(mlp_bn):
    spec, v = mlp_bn
    wide = random_variables(models.get("mlp", 10, widths=(32, 16), batch_norm=True), (1, 6, 6, 1))
    with pytest.raises(ValueError, match=r"has size 32, but permutation 'fc0' .* has size 16"):
        apply_permutation(spec, identity_perms(spec), wide["params"])
    with pytest.raises(ValueError, match=r"permutation 'p' has size 4 .* has size 5"):
        PermutationSpec.from_shapes({("a", "kernel"): (None, "p"), ("b", "kernel"): ("p", None)},
                                    {("a", "kernel"): (3, 4), ("b", "kernel"): (5, 2)})
    with pytest.raises(ValueError, match=r"has 2 axes .* names 1"):
        PermutationSpec.from_shapes({("a", "kernel"): ("p",)}, {("a", "kernel"): (3, 4)})
    with pytest.raises(ValueError, match=r"no permutation rule for leaf 'extra/kernel'"):
        mlp_spec({"params": {**v["params"], "extra": {"kernel": jnp.zeros((2, 2))}}})
    with pytest.raises(ValueError, match=r"no permutation spec for model 'mobilenet_v2'"):
        spec_for("mobilenet_v2", v)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda p: {**p, "fc0": p["fc0"][:-1]}, r"'fc0' must have shape \(16,\)"),
        (lambda p: {**p, "fc0": p["fc0"].at[0].set(p["fc0"][1])}, r"'fc0' is not a permutation"),
        (lambda p: {k: x for k, x in p.items() if k != "fc1"}, r"missing \['fc1'\]"),
        (lambda p: {**p, "extra": p["fc0"]}, r"not in the spec \['extra'\]"),
        (lambda p: {**p, "fc0": p["fc0"].astype(jnp.float32)}, r"'fc0' must hold integers"),
    ],
)
def test_bad_permutations_are_rejected(mlp_bn, edit, message):
    spec, v = mlp_bn
    perms = edit(random_perms(jax.random.PRNGKey(0), spec))
    with pytest.raises(ValueError, match=message):
        check_perms(spec, perms)
    with pytest.raises(ValueError, match=message):
        apply_permutation(spec, perms, v["params"])


def test_flax_module_paths_drive_the_spec():
    """A model outside the registry gets a spec from the same rules via its key paths."""

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Dense(5, name="fc0")(x.reshape(x.shape[0], -1)))
            return nn.Dense(3, name="head")(x)

    v = {"params": Tiny().init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"]}
    spec = mlp_spec(v)
    assert spec.axes[("fc0", "kernel")] == (None, "fc0")
    assert spec.axes[("head", "kernel")] == ("fc0", None)
    assert spec.sizes == {"fc0": 5}


@pytest.mark.parametrize("name,kwargs", [
    ("resnet50", {"widths": (6, 6, 8, 8)}),
    # sparse-rebasin's wide model: its own stem width, block outputs 2x the inner width
    ("resnet50_wide", {"widths": (6, 6, 8, 8), "stem_width": 5}),
])
def test_full_depth_resnet50_permuted_by_a_random_permutation_computes_the_same_function(
        name, kwargs):
    """The registry's ImageNet ResNet-50s (stages 3-4-6-3, 7x7 stem + max-pool, projection
    shortcuts, narrow widths): a random permutation of every unit leaves the logits unchanged."""
    model = models.get(name, 10, **kwargs)
    shape = (2, 32, 32, 3)
    v = random_variables(model, shape)
    spec = spec_for(name, v)
    # 5 residual streams (the stem's, one per stage) and two inner permutations per block.
    assert sorted(p for p in spec.names if p.startswith("residual")) == [
        f"residual{j}" for j in range(5)]
    assert len(spec.names) == 5 + 2 * 16
    perms = random_perms(jax.random.PRNGKey(11), spec)
    pv = permute_variables(spec, perms, v)
    x = jax.random.normal(jax.random.PRNGKey(3), shape)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    # (float32 sums in another order: ~1e-4 at most; a wrong permutation moves logits by O(1))
    chex.assert_trees_all_close(apply(pv, x), apply(v, x), atol=2e-4, rtol=1e-4)
    assert all(not np.array_equal(p, np.arange(p.size)) for p in perms.values())
