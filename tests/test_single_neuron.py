"""The single-neuron demonstration of Sign-In's theorems (paper Sec. 5), at small size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signticket.experiments import single_neuron as sn


def test_moment_loss_is_the_sample_loss_and_its_gradient():
    x = jax.random.normal(jax.random.PRNGKey(1), (500,))
    m = sn.sample_moments(x, jax.nn.relu(x))
    a = jnp.array([-1.3, -0.2, 0.0, 0.4, 0.9, 1.7, -0.7, 0.3])
    w = jnp.array([0.8, -0.5, 0.3, 0.0, -1.1, 0.05, -0.02, 1.4])  # both signs and w = 0
    for ai, wi in zip(a, w, strict=True):
        p = sn._params(ai, wi)
        np.testing.assert_allclose(sn.moment_loss(p, m), sn.loss_fn(p, x, jax.nn.relu(x)),
                                   rtol=1e-5, atol=1e-7)
        g_moments = jax.grad(sn.moment_loss)(p, m)
        g_sample = jax.grad(sn.loss_fn)(p, x, jax.nn.relu(x))
        for leaf_m, leaf_s in zip(jax.tree.leaves(g_moments), jax.tree.leaves(g_sample),
                                  strict=True):
            np.testing.assert_allclose(leaf_m, leaf_s, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def res():
    methods = (sn.Method("GD", False),
               sn.Method("uniform", True, 1.0, 1.0, 40),
               sn.Method("output beta", True, 10.0, 0.01, 40))
    return sn.run(n=16, steps=1500, lr=0.1, samples=400, methods=methods,
                  families=("output-heavy", "independent"))


def _frac(res, family, method, quadrant, key="recovered"):
    return next(r[key] for r in res["results"] if r["family"] == family
                and r["method"] == method and r["quadrant"] == quadrant)


def test_theorem_pattern(res):
    for fam in ("output-heavy", "independent"):
        for m in ("GD", "uniform", "output beta"):
            # Thm 5.1: from a > 0, w > 0 everything recovers
            assert _frac(res, fam, m, "a>0, w>0") == 1.0
            # Thm 5.4: from w < 0 nothing does, Sign-In included
            assert _frac(res, fam, m, "a>0, w<0") == 0.0
            assert _frac(res, fam, m, "a<0, w<0") == 0.0
    # Thm 5.1: GD fails from a < 0 (|a0| > |w0|); Thm 5.2: Sign-In with beta_a > beta_w recovers
    assert _frac(res, "output-heavy", "GD", "a<0, w>0") == 0.0
    assert _frac(res, "output-heavy", "output beta", "a<0, w>0") >= 0.9
    # a uniform beta gives the flow the same crossing condition as GD (w0 > |a0|)
    assert _frac(res, "output-heavy", "uniform", "a<0, w>0") == 0.0
    assert (_frac(res, "independent", "output beta", "a<0, w>0")
            > _frac(res, "independent", "GD", "a<0, w>0"))


def test_simulation_matches_the_conservation_law(res):
    for r in res["results"]:
        assert r["agreement"] >= 0.9, r
