"""The pytree API refuses inputs it would silently get wrong: non-bool masks, mismatched
structures, NaN weights, fractions outside [0, 1), scopes that select nothing, Flax NNX objects;
and the classifier kept dense is an explicit argument."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_params

from signticket import masks, signs, tree
from signticket.errors import UserError


@pytest.mark.parametrize("value", [0.3, 2, -1.0, 0])
def test_non_bool_mask_rejected_everywhere(params, value):
    bad = jax.tree.map(lambda x: jnp.full(jnp.shape(x), value), params)
    for call in (lambda: masks.sparsity(bad),
                 lambda: masks.apply_mask(params, bad),
                 lambda: masks.magnitude_prune(params, bad, 0.2),
                 lambda: signs.sign_transfer(params, params, bad),
                 lambda: signs.sign_agreement(params, params, bad)):
        with pytest.raises(UserError, match=r"leaf 'bn0/bias' has dtype \w+; masks must be bool"):
            call()


def test_non_bool_mask_rejected_under_jit(params):
    bad = jax.tree.map(lambda x: jnp.full(jnp.shape(x), 0.3), params)
    with pytest.raises(UserError, match="must be bool"):
        jax.jit(masks.sparsity)(bad)
    with pytest.raises(UserError, match="must be bool"):
        jax.jit(masks.apply_mask)(params, bad)


def test_mismatched_structures_rejected(params):
    mask = masks.full_mask(params)
    mask["extra"] = {"kernel": jnp.ones((2, 2), bool)}
    with pytest.raises(UserError, match="extra"):
        masks.apply_mask(params, mask)
    short = masks.full_mask(params)
    short["fc0"]["kernel"] = jnp.ones((8, 15), bool)
    with pytest.raises(UserError, match="fc0/kernel"):
        masks.magnitude_prune(params, short, 0.2)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_non_finite_weights_rejected(params, bad):
    params["conv1"]["kernel"] = params["conv1"]["kernel"].at[0, 0, 0, 0].set(bad)
    with pytest.raises(UserError, match=r"conv1/kernel.*NaN or inf"):
        masks.magnitude_prune(params, masks.full_mask(params), 0.5)


def test_nan_outside_the_pruning_scope_is_not_an_error(params):
    params["bn0"]["scale"] = params["bn0"]["scale"].at[0].set(jnp.nan)  # not ranked
    masks.magnitude_prune(params, masks.full_mask(params), 0.5)


def test_nan_check_skipped_under_jit_but_shape_checks_hold(params):
    """Documented: inside jit the values are traced, so only structure/dtype checks run."""
    prune = jax.jit(masks.magnitude_prune, static_argnames=("scope", "prunable", "keep_dense"))
    out = prune(params, masks.full_mask(params), 0.5)
    chex.assert_trees_all_equal(out, masks.magnitude_prune(params, masks.full_mask(params), 0.5))
    with pytest.raises(UserError, match="must be bool"):
        prune(params, jax.tree.map(lambda x: jnp.ones(jnp.shape(x)), params), 0.5)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_fraction_and_sparsity_outside_unit_interval(params, bad):
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        masks.magnitude_prune(params, masks.full_mask(params), bad)
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        masks.random_mask(jax.random.PRNGKey(0), params, bad)


def test_predicate_that_selects_nothing_raises(params):
    def nothing(path, leaf=None):
        return False

    mask = masks.full_mask(params)
    with pytest.raises(UserError, match="selects no leaf"):
        masks.magnitude_prune(params, mask, 0.5, prunable=nothing)
    with pytest.raises(UserError, match="selects no leaf"):
        masks.random_mask(jax.random.PRNGKey(0), params, 0.5, prunable=nothing)
    with pytest.raises(UserError, match="selects no leaf"):
        masks.sparsity(mask, prunable=nothing)


def _classifier_params():
    p = make_params()
    p["classifier"] = p.pop("head")
    return p


def test_keep_dense_keeps_a_classifier_named_otherwise():
    params = _classifier_params()
    mask = masks.full_mask(params)
    kept = masks.magnitude_prune(params, mask, 0.5, keep_dense=("classifier",))
    assert bool(jnp.all(kept["classifier"]["kernel"]))
    stats = masks.sparsity(kept, keep_dense=("classifier",))
    assert float(stats.overall) == pytest.approx(0.5, abs=1e-3)
    assert "classifier/kernel" not in stats.per_layer
    rand = masks.random_mask(jax.random.PRNGKey(0), params, 0.5, keep_dense=("classifier",))
    assert bool(jnp.all(rand["classifier"]["kernel"]))
    # The documented default keeps only a module named "head": this classifier is pruned.
    default = masks.magnitude_prune(params, mask, 0.5)
    assert not bool(jnp.all(default["classifier"]["kernel"]))
    assert masks.DEFAULT_KEEP_DENSE == ("head",)


def test_keep_dense_empty_prunes_the_head_too(params):
    out = masks.magnitude_prune(params, masks.full_mask(params), 0.5, keep_dense=())
    assert "head/kernel" in masks.sparsity(out, keep_dense=()).per_layer
    assert not bool(jnp.all(out["head"]["kernel"]))


def test_keep_dense_typo_raises(params):
    with pytest.raises(UserError, match="clasifier"):
        masks.magnitude_prune(params, masks.full_mask(params), 0.5, keep_dense=("clasifier",))


def test_keep_dense_default_matches_is_prunable(params):
    """The old default (``tree.is_prunable``) and the new one select the same leaves."""
    a = masks.magnitude_prune(params, masks.full_mask(params), 0.3)
    b = masks.magnitude_prune(params, masks.full_mask(params), 0.3, prunable=tree.is_prunable)
    chex.assert_trees_all_equal(a, b)


def test_flax_nnx_state_is_refused_with_the_conversion():
    from flax import nnx

    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    _, state = nnx.split(model, nnx.Param)
    dense = jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), nnx.to_pure_dict(state))
    for call in (lambda: masks.sparsity(state),
                 lambda: masks.magnitude_prune(state, dense, 0.5, keep_dense=()),
                 lambda: masks.random_mask(jax.random.PRNGKey(0), state, 0.5),
                 lambda: masks.apply_mask(state, dense),
                 lambda: signs.sign_agreement(state, state),
                 lambda: masks.sparsity({"params": state})):
        with pytest.raises(UserError, match=r"nnx\.to_pure_dict"):
            call()
    # The conversion named in the message works: a real mask with real statistics.
    pure = nnx.to_pure_dict(state)
    mask = masks.magnitude_prune(pure, masks.full_mask(pure), 0.5, keep_dense=())
    assert float(masks.sparsity(mask, keep_dense=()).overall) == pytest.approx(0.5)
    assert int(np.sum(np.asarray(mask["kernel"]))) == 6
