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


def test_layer_norm_parameters_are_norms_and_conv1d_kernels_prunable():
    """MLP-Mixer's names: LayerNorms ``*_ln`` (AWS interpolates them, as the official
    ``new_ln_forward``), its Conv1d / Linear kernels prunable, the classifier not."""
    for path in ("block0/token_ln/scale", "block3/channel_ln/bias", "final_ln/scale"):
        assert tree.is_norm(path) and not tree.is_prunable(path) and not tree.is_bias(path)
    for path in ("block0/token_fc1/kernel", "block0/channel_fc2/kernel", "patch_embed/kernel"):
        assert tree.is_prunable(path) and not tree.is_norm(path)
    assert tree.is_bias("block0/token_fc1/bias") and not tree.is_norm("block0/token_fc1/bias")
    assert not tree.is_prunable("head/kernel")


def test_check_finite_leaves_names_the_first_bad_leaf():
    good = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"kernel": jnp.zeros((4,))}}
    tree.check_finite_leaves(good, "params")
    bad = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"kernel": jnp.array([0.0, jnp.inf])},
           "c": {"kernel": jnp.array([jnp.nan])}}
    with pytest.raises(ValueError, match=r"params leaf 'b/kernel' holds NaN or inf"):
        tree.check_finite_leaves(bad, "params")
    # leaves outside ``where`` are not checked
    tree.check_finite_leaves(bad, "params", where=lambda p, x: p.startswith("a"))


def test_copy_arrays_gives_new_buffers_with_the_same_bits():
    import jax
    import numpy as np

    state = {"w": jnp.arange(6.0).reshape(2, 3) - 2.5, "step": jnp.zeros((), jnp.int32),
             "mask": jnp.array([True, False]), "host": np.ones(3, np.float32)}
    state["shared"] = state["w"]  # one buffer in two places: each gets its own copy
    out = tree.copy_arrays(state)
    assert jax.tree.structure(out) == jax.tree.structure(state)
    pointers = set()
    for name, x in state.items():
        y = out[name]
        assert isinstance(y, jax.Array) and y.dtype == x.dtype and y.shape == x.shape
        assert np.asarray(y).tobytes() == np.asarray(x).tobytes()
        if isinstance(x, jax.Array):
            assert y.unsafe_buffer_pointer() != x.unsafe_buffer_pointer()
            assert y.sharding == x.sharding
        pointers.add(y.unsafe_buffer_pointer())
    assert len(pointers) == len(state)
