"""Dominant Hessian eigenvalue by power iteration on HVPs, dense and masked."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signticket.curvature import _standard_normal_like, hvp, top_hessian_eigenvalue


def _spd(n, seed, top=None):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.linspace(0.1, 1.0, n)
    if top is not None:
        eig[-1] = top
    return jnp.asarray(q @ np.diag(eig) @ q.T, jnp.float32)


A = _spd(7, 0, top=5.0)
B = _spd(3, 1, top=2.0)


def _loss(p):
    # block-diagonal quadratic over a two-leaf pytree plus a cubic term that vanishes at 0
    return 0.5 * p["a"] @ A @ p["a"] + 0.5 * p["b"]["k"] @ B @ p["b"]["k"] + jnp.sum(p["a"] ** 3)


ZERO = {"a": jnp.zeros(7), "b": {"k": jnp.zeros(3)}}


def test_hvp_matches_explicit_hessian():
    v = {"a": jnp.arange(7.0), "b": {"k": jnp.ones(3)}}
    out = hvp(_loss, ZERO, v)
    chex.assert_trees_all_close(out, {"a": A @ v["a"], "b": {"k": B @ v["b"]["k"]}}, atol=1e-5)


class PowerIterationTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_top_eigenvalue_of_a_quadratic(self):
        fn = self.variant(lambda key: top_hessian_eigenvalue(_loss, ZERO, key, num_iters=200))
        eig = fn(jax.random.PRNGKey(0))
        assert float(eig.value) == pytest.approx(5.0, rel=1e-4)
        assert float(eig.residual) < 1e-2
        # the vector is A's top eigenvector (up to sign), with no weight on the other block
        top = np.linalg.eigh(np.asarray(A))[1][:, -1]
        assert abs(float(jnp.dot(eig.vector["a"], top))) == pytest.approx(1.0, abs=1e-3)


def test_mask_restricts_to_the_unmasked_subspace():
    # masking the dominant block leaves B's top eigenvalue; masking coordinates of A gives the
    # top eigenvalue of A's principal submatrix
    mask = {"a": jnp.zeros(7, bool), "b": {"k": jnp.ones(3, bool)}}
    eig = top_hessian_eigenvalue(_loss, ZERO, jax.random.PRNGKey(1), mask=mask, num_iters=200)
    assert float(eig.value) == pytest.approx(2.0, rel=1e-4)
    assert bool(jnp.all(eig.vector["a"] == 0))

    keep = np.array([True, False, True, True, False, True, False])
    mask = {"a": jnp.asarray(keep), "b": {"k": jnp.zeros(3, bool)}}
    eig = top_hessian_eigenvalue(_loss, ZERO, jax.random.PRNGKey(2), mask=mask, num_iters=300)
    sub = np.asarray(A)[np.ix_(keep, keep)]
    assert float(eig.value) == pytest.approx(np.linalg.eigvalsh(sub)[-1], rel=1e-3)


def test_start_vector_is_one_draw_cut_into_the_leaves():
    params = {"a": jnp.zeros((3, 4)),
              "b": {"c": jnp.zeros(5, jnp.bfloat16), "d": jnp.zeros((2, 2))}}
    key = jax.random.PRNGKey(3)
    v = _standard_normal_like(key, params)
    flat = jax.random.normal(key, (21,), jnp.float32)
    chex.assert_trees_all_equal_shapes_and_dtypes(v, params)
    np.testing.assert_array_equal(v["a"], flat[:12].reshape(3, 4))
    np.testing.assert_array_equal(v["b"]["c"], flat[12:17].astype(jnp.bfloat16))
    np.testing.assert_array_equal(v["b"]["d"], flat[17:].reshape(2, 2))
    assert _standard_normal_like(key, {}) == {}


def test_power_iteration_program_draws_its_start_once_whatever_the_leaf_shapes():
    # one random-normal kernel, not one per leaf shape (each is seconds of compiling)
    params = {"a": jnp.zeros(7), "b": {"k": jnp.zeros(3)}, "c": jnp.zeros((2, 5))}
    loss = lambda p: sum(jnp.sum(jnp.cos(x)) for x in jax.tree.leaves(p))
    text = jax.jit(lambda p: top_hessian_eigenvalue(loss, p, jax.random.PRNGKey(0),
                                                    num_iters=2).value).lower(p=params).as_text()
    assert text.count("erf_inv") == 1


def test_bad_input():
    with pytest.raises(ValueError, match="num_iters must be >= 1"):
        top_hessian_eigenvalue(_loss, ZERO, jax.random.PRNGKey(0), num_iters=0)
    with pytest.raises(ValueError, match="pytree structures differ"):
        top_hessian_eigenvalue(_loss, ZERO, jax.random.PRNGKey(0), mask={"a": jnp.ones(7, bool)})
