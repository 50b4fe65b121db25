"""The single-neuron demonstration of Sign-In's theorems (paper Sec. 5), at small size."""

import pytest

from signticket.experiments import single_neuron as sn


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
