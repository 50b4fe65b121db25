"""Runs one native-conv check in a fresh process, so the parent test can pick oneDNN's
instruction set (``ONEDNN_MAX_CPU_ISA`` is read once per process) and kill a hang:

    python tests/_native_conv_probe.py fuzz      # self-check >= 200 geometries; JSON report
    python tests/_native_conv_probe.py stress N  # N runs of many concurrent convs; JSON report
"""

from __future__ import annotations

import json
import random
import sys

# oneDNN#6035's corner first: strided 1x1 kernel gradients with fewer input channels than the
# SIMD block (8 on AVX2, 16 on AVX-512), then its larger crashing case.
REGRESSIONS = [
    (2, 8, 8, 3, 1, 1, 6, 2, 2, 0, 0, 0, 0),
    (2, 8, 8, 4, 1, 1, 6, 2, 2, 0, 0, 0, 0),
    (2, 8, 8, 3, 1, 1, 8, 2, 2, 0, 0, 0, 0),
    (8, 64, 64, 4, 1, 1, 8, 2, 2, 0, 0, 0, 0),
    (4, 32, 32, 12, 1, 1, 16, 2, 2, 0, 0, 0, 0),
]
CHANNELS = (1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 64)


def fuzz_geometries(count: int, seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` random conv geometries (n, h, w, c, kh, kw, o, strides, pads): kernels 1-5
    (1x1 often), strides 1-3, asymmetric padding, small and odd channel counts, even and odd
    image sizes."""
    rng = random.Random(seed)
    out = list(REGRESSIONS)
    while len(out) < count:
        kh = rng.choice((1, 1, 1, 2, 3, 3, 5))
        kw = rng.choice((kh, kh, 1, 3))
        h, w = rng.randint(1, 17), rng.randint(1, 17)
        pads = [rng.randint(0, max(k - 1, 1)) for k in (kh, kh, kw, kw)]
        if h + pads[0] + pads[1] < kh or w + pads[2] + pads[3] < kw:
            continue
        stride = rng.choice((1, 2, 2, 3))
        out.append((rng.choice((1, 2, 3, 4, 8, 16)), h, w, rng.choice(CHANNELS), kh, kw,
                    rng.choice(CHANNELS), stride, rng.choice((stride, 1)), *pads))
    return out


def fuzz(count: int = 240) -> dict:
    from signticket.native import conv

    dtypes = ["float32"] + (["bfloat16"] if conv.bf16_supported() else [])
    failures = []
    for dtype in dtypes:
        geometries = fuzz_geometries(count if dtype == "float32" else count // 4, seed=len(dtype))
        for geom in geometries:
            verdict = conv.check_now(geom, dtype)
            if not verdict.ok:
                failures.append([list(geom), dtype, verdict.detail])
    return {"runtime": conv.runtime(), "checked": count, "dtypes": dtypes, "failures": failures}


def stress(repeats: int) -> dict:
    """Many independent convs (and both their gradients) in one program, which XLA runs on
    several threads at once, ``repeats`` times: every run bit-identical to the first, the
    first equal to XLA's."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from signticket.native import conv

    geometries = fuzz_geometries(10, seed=7)
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(geometries))
    operands = []
    for i, (n, h, w, c, kh, kw, o, sh, sw, pt, pb, pl, pr) in enumerate(geometries):
        operands.append((jax.random.normal(keys[2 * i], (n, h, w, c)),
                         jax.random.normal(keys[2 * i + 1], (kh, kw, c, o)) / 3,
                         (sh, sw), ((pt, pb), (pl, pr))))

    def grads(conv_fn):
        def total(xs, ws):
            return sum(jnp.sum(jnp.sin(conv_fn(x, w, s, p)))
                       for x, w, (_, _, s, p) in zip(xs, ws, operands, strict=True))
        return jax.jit(jax.grad(total, (0, 1)))

    def xla(x, w, s, p):
        return lax.conv_general_dilated(x, w, s, p, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision="highest")

    xs, ws = [op[0] for op in operands], [op[1] for op in operands]
    ours = grads(conv.conv)
    first = jax.device_get(ours(xs, ws))
    want = jax.device_get(grads(xla)(xs, ws))
    error = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(first), jax.tree.leaves(want), strict=True))
    differing = 0
    for _ in range(repeats - 1):
        again = jax.device_get(ours(xs, ws))
        differing += any(not np.array_equal(a, b) for a, b in
                         zip(jax.tree.leaves(again), jax.tree.leaves(first), strict=True))
    return {"runtime": conv.runtime(), "repeats": repeats, "runs_differing": differing,
            "max_error_vs_xla": error}


if __name__ == "__main__":
    mode = sys.argv[1]
    report = fuzz() if mode == "fuzz" else stress(int(sys.argv[2]))
    print(json.dumps(report))
