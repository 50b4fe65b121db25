import chex
import jax
import jax.numpy as jnp
import pytest
from conftest import make_params

from signticket import masks, signs, tree


class TestSignTransfer(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_magnitudes_from_init_signs_from_donor(self):
        init, donor = make_params(0), make_params(1)
        mask = masks.random_mask(jax.random.PRNGKey(0), init, 0.6)
        out = self.variant(signs.sign_transfer, static_argnames="which")(init, donor, mask)
        for (path, o), i, d, m in zip(
            tree.named_leaves(out),
            jax.tree.leaves(init),
            jax.tree.leaves(donor),
            jax.tree.leaves(mask),
            strict=True,
        ):
            if signs.TRANSFER_DEFAULT(path):
                expect = jnp.where(m, jnp.abs(i) * jnp.where(d >= 0, 1.0, -1.0), 0.0)
                chex.assert_trees_all_equal(o, expect)
            else:  # norm params keep the new init
                chex.assert_trees_all_equal(o, jnp.where(m, i, 0.0))
        # magnitudes are exactly the init's on kept entries
        k = out["conv1"]["kernel"]
        m = mask["conv1"]["kernel"]
        assert bool(jnp.all(jnp.where(m, jnp.abs(k) == jnp.abs(init["conv1"]["kernel"]), k == 0)))


def test_selectable_leaves():
    init, donor = make_params(0), make_params(1)
    out = signs.sign_transfer(init, donor, which=tree.is_prunable)
    chex.assert_trees_all_equal(out["head"], init["head"])
    assert bool(jnp.all(jnp.sign(out["fc0"]["kernel"]) == jnp.sign(donor["fc0"]["kernel"])))


def test_agreement_and_flips():
    a = make_params(0)
    assert float(signs.sign_agreement(a, a).overall) == 1.0
    neg = jax.tree.map(lambda x: -x, a)
    stats = signs.sign_flips(a, neg)
    assert float(stats.overall) == 1.0
    assert set(stats.per_layer) == {p for p, _ in tree.named_leaves(a) if tree.is_prunable(p)}
    # flips only count unmasked entries
    mask = jax.tree.map(lambda x: jnp.zeros(x.shape, bool), a)
    mask["fc0"]["kernel"] = jnp.ones((8, 16), bool)
    s = signs.sign_flips(a, neg, mask)
    assert float(s.per_layer["fc0/kernel"]) == 1.0
    assert float(s.overall) == 1.0


def test_agreement_jittable():
    a, b = make_params(0), make_params(1)
    chex.assert_trees_all_close(signs.sign_agreement(a, b), jax.jit(signs.sign_agreement)(a, b))


def test_mismatch_rejected():
    a, b = make_params(0), make_params(1)
    b.pop("head")
    with pytest.raises(ValueError, match="structures differ"):
        signs.sign_transfer(a, b)
    with pytest.raises(ValueError, match="structures differ"):
        signs.sign_agreement(a, b)
