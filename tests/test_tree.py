import jax.numpy as jnp
import pytest

from signticket import tree


def test_predicates_classify_leaves(params):
    paths = dict(tree.named_leaves(params))
    prunable = {p for p in paths if tree.is_prunable(p)}
    assert prunable == {"conv0/kernel", "conv1/kernel", "stage0_block0/conv1/kernel", "fc0/kernel"}
    norm = {p for p in paths if tree.is_norm(p)}
    assert norm == {"bn0/scale", "bn0/bias", "stage0_block0/bn1/scale", "stage0_block0/bn1/bias"}
    assert {p for p in paths if tree.is_bias(p)} == {"fc0/bias", "head/bias"}
    assert {p for p in paths if tree.is_head(p)} == {"head/kernel", "head/bias"}


def test_select_with_custom_predicate(params):
    sel = tree.select(params, lambda p, x: p.startswith("conv"))
    assert sel["conv0"]["kernel"] and not sel["fc0"]["kernel"]


def test_check_same_structure_names_difference(params):
    other = dict(params)
    other.pop("fc0")
    with pytest.raises(ValueError, match="fc0"):
        tree.check_same_structure(params, other, "params", "mask")
    bad = dict(params, head={"kernel": jnp.zeros((3, 3)), "bias": jnp.zeros(10)})
    with pytest.raises(ValueError, match="head/kernel"):
        tree.check_same_structure(params, bad)
