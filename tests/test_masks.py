import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signticket import masks, tree


def _count(mask, predicate=tree.is_prunable):
    return sum(int(jnp.sum(m)) for p, m in tree.named_leaves(mask) if predicate(p))


class TestMagnitudePrune(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_global_exact_count_and_no_revival(self):
        from conftest import make_params

        params = make_params()
        mask = masks.full_mask(params)
        prune = self.variant(masks.magnitude_prune, static_argnames=("scope", "prunable"))
        for _ in range(5):
            before = _count(mask)
            new = prune(params, mask, 0.2)
            assert _count(new) == before - round(0.2 * before)
            # never revives: new <= old everywhere
            for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(mask), strict=True):
                assert not bool(jnp.any(a & ~b))
            mask = new
        # non-prunable leaves untouched
        assert bool(jnp.all(mask["head"]["kernel"])) and bool(jnp.all(mask["bn0"]["scale"]))

    @chex.variants(with_jit=True, without_jit=True)
    def test_layerwise_exact_count(self):
        from conftest import make_params

        params = make_params()
        mask = masks.full_mask(params)
        new = self.variant(masks.magnitude_prune, static_argnames=("scope", "prunable"))(
            params, mask, 0.5, scope="layerwise"
        )
        for p, m in tree.named_leaves(new):
            if tree.is_prunable(p):
                assert int(jnp.sum(m)) == m.size - round(0.5 * m.size)


def test_global_prunes_smallest_magnitudes():
    params = {
        "a": {"kernel": jnp.array([[0.1, -5.0], [3.0, -0.2]])},
        "head": {"kernel": jnp.zeros((2, 2))},
    }
    new = masks.magnitude_prune(params, masks.full_mask(params), 0.5)
    np.testing.assert_array_equal(new["a"]["kernel"], [[False, True], [True, False]])


def test_ties_broken_deterministically_exact_count():
    params = {"a": {"kernel": jnp.ones((10, 10))}, "b": {"kernel": jnp.ones((5, 5))}}
    new = masks.magnitude_prune(params, masks.full_mask(params), 0.3)
    assert _count(new) == 125 - round(0.3 * 125)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_fraction_rejected(params, bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        masks.magnitude_prune(params, masks.full_mask(params), bad)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        masks.random_mask(jax.random.PRNGKey(0), params, bad)


def test_mismatched_mask_rejected(params):
    mask = masks.full_mask(params)
    mask.pop("conv0")
    with pytest.raises(ValueError, match="structures differ"):
        masks.magnitude_prune(params, mask, 0.2)
    with pytest.raises(ValueError, match="structures differ"):
        masks.apply_mask(params, mask)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
def test_random_mask_hits_target_sparsity(distribution, target):
    params = {
        "c0": {"kernel": jnp.zeros((3, 3, 3, 64))},
        "c1": {"kernel": jnp.zeros((3, 3, 64, 128))},
        "fc": {"kernel": jnp.zeros((512, 256))},
        "head": {"kernel": jnp.zeros((256, 10))},
    }
    mask = masks.random_mask(jax.random.PRNGKey(1), params, target, distribution)
    s = masks.sparsity(mask)
    total = sum(x.size for p, x in tree.named_leaves(params) if tree.is_prunable(p))
    assert abs(float(s.overall) - target) <= 3 / total + 1e-6
    if distribution == "uniform":
        for v in s.per_layer.values():
            assert abs(float(v) - target) < 0.01
    else:  # ERK: smaller layers are denser
        assert float(s.per_layer["c0/kernel"]) < float(s.per_layer["c1/kernel"])
    assert bool(jnp.all(mask["head"]["kernel"]))


def test_random_mask_deterministic_and_key_dependent(params):
    a = masks.random_mask(jax.random.PRNGKey(0), params, 0.5)
    b = masks.random_mask(jax.random.PRNGKey(0), params, 0.5)
    c = masks.random_mask(jax.random.PRNGKey(1), params, 0.5)
    chex.assert_trees_all_equal(a, b)
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True)
    assert not all(bool(jnp.all(x == y)) for x, y in pairs)


def test_erk_densities_respect_budget_and_cap():
    shapes = {"small": (3, 3, 1, 4), "big": (3, 3, 256, 256)}
    d = masks.erk_densities(shapes, 0.1)
    assert d["small"] == 1.0
    kept = sum(d[k] * np.prod(s) for k, s in shapes.items())
    assert abs(kept - 0.1 * sum(np.prod(s) for s in shapes.values())) < 1e-6 * kept


def test_apply_mask_zeroes_exactly(params):
    mask = masks.random_mask(jax.random.PRNGKey(3), params, 0.7)
    out = masks.apply_mask(params, mask)
    for x, m in zip(jax.tree.leaves(out), jax.tree.leaves(mask), strict=True):
        assert bool(jnp.all(jnp.where(m, True, x == 0)))


def test_sparsity_jittable(params):
    mask = masks.random_mask(jax.random.PRNGKey(0), params, 0.5)
    eager = masks.sparsity(mask)
    jitted = jax.jit(masks.sparsity)(mask)
    chex.assert_trees_all_close(eager, jitted)


def test_sparsity_is_the_exact_quotient_of_counts():
    """Each fraction is float32(pruned) / float32(size), bit for bit (one program computes them
    all; XLA would turn a division by a constant size into a multiplication, an ulp off at
    ResNet-20's 3x3x16x16 kernels)."""
    rng = np.random.RandomState(0)

    def kernel(pruned: int) -> jax.Array:  # counts where z * (1 / 2304) != z / 2304 in float32
        return jnp.asarray(rng.permutation(2304).reshape(3, 3, 16, 16) >= pruned)

    mask = {f"conv{i}": {"kernel": kernel(z)} for i, z in enumerate((17, 41, 1843, 2000))}
    got = masks.sparsity(mask)
    pruned = total = 0
    for name, m in got.per_layer.items():
        leaf = np.asarray(dict(tree.named_leaves(mask))[name])
        zeros = int(np.sum(~leaf))
        assert np.asarray(m).dtype == np.float32
        assert np.asarray(m).tobytes() == (np.float32(zeros) / np.float32(leaf.size)).tobytes()
        pruned, total = pruned + zeros, total + leaf.size
    assert len(got.per_layer) == 4
    assert np.asarray(got.overall).tobytes() == (np.float32(pruned) / np.float32(total)).tobytes()


def test_rounds_of_pruning_on_placed_params_compile_once():
    """IMP prunes round 1 from ``full_mask(params)`` and later rounds from the previous output:
    the dense mask must be placed like the (mesh-placed) params, or round 2 recompiles the
    pruning program (it did: ~0.3-0.6 s, 17 % of a warm IMP round, ``bench.imp_round``)."""
    from signticket.sharding import make_mesh

    mesh = make_mesh()
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params = jax.device_put(
        {"a": {"kernel": jnp.arange(1.0, 41.0).reshape(5, 8)},
         "b": {"kernel": jnp.linspace(-1.0, 1.0, 24).reshape(4, 6)}}, sharding)
    before = masks._prune_leaves._cache_size()
    mask = masks.full_mask(params)
    for _ in range(3):
        mask = masks.magnitude_prune(params, mask, 0.2, keep_dense=())
        params = masks.apply_mask(params, mask)
    assert masks._prune_leaves._cache_size() - before <= 1
    assert int(sum(np.sum(np.asarray(m)) for m in jax.tree.leaves(mask))) == 64 - 13 - 10 - 8
