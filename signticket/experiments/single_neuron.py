"""Sign-In's theory, run: a single ReLU neuron ``f(x) = a * relu(w * x)`` learning the teacher
``relu(x)`` (Gadhikar, Jacobs, Zhou, Burkholz, NeurIPS 2025, Sec. 5: Thm 5.1 / 5.2 / 5.4).

    python -m signticket.experiments.single_neuron --out results/single_neuron  # seconds on a CPU

For many random inits in each sign quadrant of ``(a, w)`` (vmapped), full-batch gradient descent
on a fixed Gaussian sample (through five sums of it, :func:`moment_loss`: the same loss), with

* plain GD on ``(a, w)`` (the paper's "gradient flow", Thm 5.1),
* Sign-In (``signticket.sign_in.sign_in`` over the same SGD, so this exercises the library's
  transform): ``a = m_a w_a``, ``w = m_w w_w`` with balances ``beta_a`` (output) and
  ``beta_w`` (hidden), with and without scaling resets every ``p`` steps (Thm 5.2),

and records the fraction that recovers the teacher (final loss below ``tol``). Theory, from the
conservation laws of the two flows (derived in docs/protocols/sign_in.md): from ``w < 0`` nothing
recovers (the gradient drives ``w`` to 0 and stops there: Thm 5.4); from ``a > 0, w > 0``
everything does; from ``a < 0, w > 0`` plain gradient flow recovers iff ``w0 > |a0|`` (never for
the balanced init ``|a0| = |w0|``), Sign-In iff
``sqrt(4 w0^2 + beta_w^2) - beta_w > sqrt(4 a0^2 + beta_a^2) - beta_a``: always when
``beta_a >> beta_w`` (the paper's ``beta_1 > beta_2``), but with a uniform beta exactly when
plain GD does. Each simulated init is compared with this prediction as well.

Writes ``table.md``, ``results.json`` and ``single_neuron.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from signticket.errors import UserError
from signticket.sign_in import sign_in

QUADRANTS = ((1, 1), (-1, 1), (1, -1), (-1, -1))  # (sign a, sign w)
QUADRANT_NAMES = ("a>0, w>0", "a<0, w>0", "a>0, w<0", "a<0, w<0")
THEOREM = {  # what the paper proves for each quadrant (Sec. 5)
    "a>0, w>0": "Thm 5.1: GD recovers",
    "a<0, w>0": "Thm 5.1: GD fails (balanced init); Thm 5.2: Sign-In (beta_a > beta_w) recovers",
    "a>0, w<0": "Thm 5.4: no continuous reparameterization recovers",
    "a<0, w<0": "Thm 5.4: no continuous reparameterization recovers",
}


class Method(NamedTuple):
    """One optimizer: plain GD (``sign_in=False``) or Sign-In with output / hidden balances and a
    reset period in steps (None: no resets)."""

    name: str
    sign_in: bool
    beta_a: float = 1.0
    beta_w: float = 1.0
    reset_every: int | None = None


DEFAULT_METHODS = (
    Method("GD", False),
    Method("Sign-In β=1, p=50", True, 1.0, 1.0, 50),
    Method("Sign-In β=1, no reset", True, 1.0, 1.0, None),
    Method("Sign-In β_a=1, β_w=0.01, p=50", True, 1.0, 0.01, 50),
    Method("Sign-In β_a=10, β_w=0.01, p=50", True, 10.0, 0.01, 50),
    Method("Sign-In β_a=10, β_w=0.01, no reset", True, 10.0, 0.01, None),
)


def _params(a, w):
    # "kernel" leaves: sign_in's default reparam predicate (is_kernel) picks both
    return {"out": {"kernel": a}, "hidden": {"kernel": w}}


def loss_fn(params, x, y):
    """The loss being minimized: half the mean squared error on the sample ``(x, y)``."""
    a, w = params["out"]["kernel"], params["hidden"]["kernel"]
    return 0.5 * jnp.mean((a * jax.nn.relu(w * x) - y) ** 2)


def sample_moments(x, y) -> dict[str, jax.Array]:
    """The five sums of the sample that :func:`loss_fn` depends on, split by the sign of x:
    ``relu(w x)`` is ``w x`` on ``x > 0`` when ``w > 0`` and on ``x < 0`` when ``w < 0``."""
    pos, neg = x > 0, x < 0
    return {"xx_pos": jnp.mean(jnp.where(pos, x * x, 0.0)),
            "xx_neg": jnp.mean(jnp.where(neg, x * x, 0.0)),
            "xy_pos": jnp.mean(jnp.where(pos, x * y, 0.0)),
            "xy_neg": jnp.mean(jnp.where(neg, x * y, 0.0)),
            "yy": jnp.mean(y * y)}


def moment_loss(params, m: dict[str, jax.Array]):
    """:func:`loss_fn` from :func:`sample_moments`, exactly (the same function of ``(a, w)``,
    and the same gradient, ``relu'(0) = 0`` included): ``0.5 (a^2 w^2 xx - 2 a w xy + yy)``
    with the sums of the half-line ``w`` selects. O(1) per step instead of O(sample), so the
    thousands of GD steps of hundreds of inits take milliseconds, not tens of seconds."""
    a, w = params["out"]["kernel"], params["hidden"]["kernel"]
    xx = jnp.where(w > 0, m["xx_pos"], m["xx_neg"])
    xy = jnp.where(w > 0, m["xy_pos"], m["xy_neg"])
    return 0.5 * (a * a * w * w * xx - 2.0 * a * w * xy + m["yy"])


def make_tx(method: Method, lr: float) -> optax.GradientTransformation:
    if not method.sign_in:
        return optax.sgd(lr)
    beta = lambda name, leaf: method.beta_a if name.startswith("out") else method.beta_w
    return sign_in(optax.sgd(lr), reset_every=method.reset_every, c=beta)


def train(method: Method, a0: jax.Array, w0: jax.Array, x: jax.Array, y: jax.Array, *,
          lr: float, steps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Final ``(a, w, loss)`` for each init in the vectors ``a0``, ``w0`` (vmapped)."""
    tx = make_tx(method, lr)
    moments = sample_moments(x, y)

    def one(a, w):
        params = _params(a, w)
        state = tx.init(params)

        def step(carry, _):
            p, s = carry
            g = jax.grad(moment_loss)(p, moments)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, state), None, length=steps)
        return p["out"]["kernel"], p["hidden"]["kernel"], loss_fn(p, x, y)

    return jax.jit(jax.vmap(one))(a0, w0)


def predicted(method: Method, a0: np.ndarray, w0: np.ndarray) -> np.ndarray:
    """Recovery predicted by the conservation law of the method's gradient flow (resets do not
    change it: under the flow the balance is conserved, so a reset to the same beta is a no-op)."""
    if method.sign_in:
        ba, bw = method.beta_a, method.beta_w
        phi_a = np.sqrt(4 * a0**2 + ba**2) - ba
        phi_w = np.sqrt(4 * w0**2 + bw**2) - bw
    else:
        phi_a, phi_w = a0**2, w0**2
    return (w0 > 0) & ((a0 > 0) | (phi_w > phi_a))


FAMILIES = {
    "independent": "|a0|, |w0| ~ U(0.05, 1) independently",
    "output-heavy": "|a0| ~ U(0.05, 1), |w0| = u |a0| with u ~ U(0.3, 0.95)",
    "balanced": "|a0| = |w0| ~ U(0.05, 1): the knife edge of GD's condition; exact flows reach "
                "the saddle 0, so rounding decides which side a run falls",
}


def sample_inits(key: jax.Array, n: int, family: str, low: float = 0.05, high: float = 1.0):
    """``n`` inits per quadrant, quadrants in :data:`QUADRANTS` order, magnitudes per
    :data:`FAMILIES`. ``output-heavy`` (``|a0| > |w0|``) is where the theorems separate the
    methods: GD fails from ``a0 < 0`` there."""
    if family not in FAMILIES:
        raise UserError(f"unknown init family {family!r}; available: {', '.join(FAMILIES)}")
    ka, kw = jax.random.split(key)
    ma = jax.random.uniform(ka, (4, n), minval=low, maxval=high)
    if family == "balanced":
        mw = ma
    elif family == "output-heavy":
        mw = ma * jax.random.uniform(kw, (4, n), minval=0.3, maxval=0.95)
    else:
        mw = jax.random.uniform(kw, (4, n), minval=low, maxval=high)
    sa = jnp.array([q[0] for q in QUADRANTS], jnp.float32)[:, None]
    sw = jnp.array([q[1] for q in QUADRANTS], jnp.float32)[:, None]
    return (sa * ma).ravel(), (sw * mw).ravel()


def run(*, n: int = 200, steps: int = 3000, lr: float = 0.1, samples: int = 1000,
        tol: float = 1e-3, seed: int = 0, families=("output-heavy", "independent"),
        methods=DEFAULT_METHODS) -> dict:
    """Recovery fractions per (family, method, quadrant), simulated and predicted."""
    key = jax.random.PRNGKey(seed)
    kx, ki = jax.random.split(key)
    x = jax.random.normal(kx, (samples,))
    y = jax.nn.relu(x)
    base = float(loss_fn(_params(0.0, 0.0), x, y))  # loss of the zero function
    out = {"config": {"n": n, "steps": steps, "lr": lr, "samples": samples, "tol": tol,
                      "seed": seed, "zero_function_loss": base},
           "results": []}
    for fam in families:
        a0, w0 = sample_inits(jax.random.fold_in(ki, len(fam)), n, fam)
        for m in methods:
            _, _, loss = train(m, a0, w0, x, y, lr=lr, steps=steps)
            ok = np.asarray(loss < tol * base)
            pred = predicted(m, np.asarray(a0), np.asarray(w0))
            for qi, q in enumerate(QUADRANT_NAMES):
                sl = slice(qi * n, (qi + 1) * n)
                out["results"].append({
                    "family": fam, "method": m.name, "quadrant": q,
                    "recovered": float(ok[sl].mean()), "predicted": float(pred[sl].mean()),
                    "agreement": float((ok[sl] == pred[sl]).mean()),
                })
            out.setdefault("inits", {})[fam] = {"a0": np.asarray(a0).tolist(),
                                                "w0": np.asarray(w0).tolist()}
            out.setdefault("ok", {}).setdefault(fam, {})[m.name] = ok.tolist()
    return out


def table(res: dict) -> str:
    cfg = res["config"]
    lines = [
        "# Single neuron: fraction of inits that recover the teacher",
        "",
        f"`f(x) = a relu(w x)`, teacher `relu(x)`, x ~ N(0,1) ({cfg['samples']} samples), "
        f"full-batch GD, lr {cfg['lr']}, {cfg['steps']} steps, {cfg['n']} inits per quadrant; "
        f"recovered: final loss < {cfg['tol']} x the zero "
        "function's. Cell: simulated (predicted by the flow's conservation law).",
        "",
    ]
    for fam in dict.fromkeys(r["family"] for r in res["results"]):
        lines += [f"**{fam} init** ({FAMILIES[fam]})", "",
                  "| method | " + " | ".join(QUADRANT_NAMES) + " |",
                  "|---|" + "---|" * len(QUADRANT_NAMES)]
        for m in dict.fromkeys(r["method"] for r in res["results"] if r["family"] == fam):
            cells = []
            for q in QUADRANT_NAMES:
                r = next(r for r in res["results"]
                         if r["family"] == fam and r["method"] == m and r["quadrant"] == q)
                cells.append(f"{100 * r['recovered']:.0f} % ({100 * r['predicted']:.0f} %)")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Theory (paper Sec. 5): " + "; ".join(f"{q}: {t}" for q, t in THEOREM.items()),
              ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    """Which inits recover (green) and which fail (red), per family and method."""
    # here, not at the top: experiments.common brings orbax (checkpoints) this module never needs
    from signticket.experiments.common import pyplot, save_figure

    plt = pyplot()
    fams = list(res["ok"])
    methods = list(res["ok"][fams[0]])
    fig, axes = plt.subplots(len(fams), len(methods), figsize=(3.1 * len(methods),
                                                                3.0 * len(fams)),
                             squeeze=False, sharex=True, sharey=True)
    for i, fam in enumerate(fams):
        a0 = np.asarray(res["inits"][fam]["a0"])
        w0 = np.asarray(res["inits"][fam]["w0"])
        for j, m in enumerate(methods):
            ok = np.asarray(res["ok"][fam][m], bool)
            ax = axes[i, j]
            ax.scatter(a0[~ok], w0[~ok], s=4, c="tab:red", label="fails")
            ax.scatter(a0[ok], w0[ok], s=4, c="tab:green", label="recovers")
            ax.axhline(0, c="k", lw=0.5)
            ax.axvline(0, c="k", lw=0.5)
            ax.set_title(f"{m}\n({fam} init)", fontsize=8)
            if i == len(fams) - 1:
                ax.set_xlabel("a0 (output)")
            if j == 0:
                ax.set_ylabel("w0 (hidden)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    return save_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/single_neuron")
    ap.add_argument("--n", type=int, default=200, help="inits per quadrant")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = run(n=args.n, steps=args.steps, lr=args.lr, seed=args.seed)
    md = table(res)
    (out / "table.md").write_text(md)
    slim = {k: v for k, v in res.items() if k in ("config", "results")}
    (out / "results.json").write_text(json.dumps(slim, indent=1))
    plot(res, out / "single_neuron.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
