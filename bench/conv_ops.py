"""Each convolution's three ops on their own: signticket (oneDNN), XLA and PyTorch.

    python -m bench.conv_ops                  # the CPU workloads' conv shapes, batch 128
    python -m bench.conv_ops --tiny           # smoke run (CI): tiny sizes, no figures claimed

For every 3x3 stride-1 conv shape of the convnet and ResNet-20, and VGG-11's last stage, times
the forward pass, the input gradient and the kernel gradient, each jitted on its own
(signticket's conv entry point and its VJPs, NHWC/HWIO: oneDNN where
:mod:`signticket.native.conv` is enabled, the dense linear map on 2x2 images whatever the
backend) and the same entry point with ``SIGNTICKET_CONV=xla`` (XLA's conv, or the im2col
matmul for single-channel inputs), against
``torch.nn.functional.conv2d`` and ``aten.convolution_backward`` (channels_last) when torch is
installed. Milliseconds, median over repeats (:mod:`bench.timing`). Writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import jax

from bench import report, timing, torch_models
from signticket.models import layers
from signticket.native import conv as native_conv

# (name, batch, height, width, in channels, out channels): the convnet (16, 32, 64) on 28x28x1,
# ResNet-20's three stages on 32x32x3 and VGG-11's last stage (2x2 images: the dense-map route).
SHAPES = [
    ("convnet conv0", 128, 28, 28, 1, 16),
    ("convnet conv1", 128, 14, 14, 16, 32),
    ("convnet conv2", 128, 7, 7, 32, 64),
    ("resnet20 stage0", 128, 32, 32, 16, 16),
    ("resnet20 stage1", 128, 16, 16, 32, 32),
    ("resnet20 stage2", 128, 8, 8, 64, 64),
    ("vgg11 stage4", 128, 2, 2, 512, 512),
]
OPS = ("forward", "input_grad", "kernel_grad")


def _conv(x: jax.Array, k: jax.Array) -> jax.Array:
    # signticket's conv entry point: oneDNN, XLA's conv or im2col, as layers.py routes it.
    dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
    return layers.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)


def jax_ops(n: int, h: int, w: int, cin: int, cout: int) -> dict[str, Any]:
    """Zero-argument callables running each op of one conv shape through signticket's conv
    entry point (traced on the first call, under the ``SIGNTICKET_CONV`` in effect then)."""
    kx, kk, ky = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (n, h, w, cin))
    k = 0.1 * jax.random.normal(kk, (3, 3, cin, cout))
    dy = jax.random.normal(ky, (n, h, w, cout))
    fwd = jax.jit(_conv)
    dx = jax.jit(lambda x, k, dy: jax.vjp(lambda x_: _conv(x_, k), x)[1](dy)[0])
    dk = jax.jit(lambda x, k, dy: jax.vjp(lambda k_: _conv(x, k_), k)[1](dy)[0])
    return {"forward": lambda: fwd(x, k), "input_grad": lambda: dx(x, k, dy),
            "kernel_grad": lambda: dk(x, k, dy)}


def torch_ops(n: int, h: int, w: int, cin: int, cout: int) -> dict[str, Any]:
    """The same three ops in eager PyTorch (channels_last, all CPU threads)."""
    import os

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    cl = torch.channels_last
    x = torch.randn(n, cin, h, w).to(memory_format=cl)
    k = 0.1 * torch.randn(cout, cin, 3, 3)
    dy = torch.randn(n, cout, h, w).to(memory_format=cl)

    def backward(mask: list[bool]):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, k, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    return {"forward": lambda: torch.nn.functional.conv2d(x, k, padding=1),
            "input_grad": backward([True, False, False]),
            "kernel_grad": backward([False, True, False])}


IMPLS = ("signticket", "xla", "torch")


def _jax_ops_on(backend: str, dims) -> dict[str, Any]:
    """``jax_ops`` traced with ``SIGNTICKET_CONV=backend`` (the routing is read at trace time)."""
    ops = jax_ops(*dims)
    previous = os.environ.get(native_conv.ENV_BACKEND)
    os.environ[native_conv.ENV_BACKEND] = backend
    try:
        for op in ops.values():
            jax.block_until_ready(op())
    finally:
        if previous is None:
            del os.environ[native_conv.ENV_BACKEND]
        else:
            os.environ[native_conv.ENV_BACKEND] = previous
    return ops


def measure(shapes: list[tuple], repeats: int, with_torch: bool) -> list[dict[str, Any]]:
    """Median milliseconds of every op of every shape: signticket's routing, XLA and
    (optionally) torch."""
    results = []
    for name, *dims in shapes:
        _, h, w, *_ = dims
        route = ("dense map" if layers.takes_dense_map((h, w), (3, 3))
                 else "onednn" if native_conv.enabled() else "xla")
        row: dict[str, Any] = {"conv": name, "shape_nhwc_cin_cout": dims, "signticket_conv": route}
        impls = {"signticket": _jax_ops_on("auto", dims), "xla": _jax_ops_on("xla", dims)}
        if with_torch:
            impls["torch"] = torch_ops(*dims)
        for impl, ops in impls.items():
            for op in OPS:
                t = timing.time_calls(ops[op], repeats=repeats, number=1, warmup=2)
                row[f"{impl}_{op}_ms"] = round(1000 * t.median_s, 3)
        results.append(row)
    return results


def format_rows(results: list[dict[str, Any]]) -> str:
    lines = [f"{'conv':<17} {'NHW,cin,cout':<17}" + "".join(
        f"{op + ' ours/xla/torch ms':>34}" for op in OPS)]
    for r in results:
        cells = []
        for op in OPS:
            ours, xla, theirs = (r.get(f"{impl}_{op}_ms") for impl in IMPLS)
            ratio = f" ({theirs / ours:.2f}x)" if theirs else ""
            cells.append(f"{ours:.2f} / {xla:.2f} / {theirs if theirs else '-'}{ratio}")
        dims = ",".join(str(d) for d in r["shape_nhwc_cin_cout"])
        lines.append(f"{r['conv']:<17} {dims:<17}" + "".join(f"{c:>34}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    p.add_argument("--no-torch", action="store_true", help="JAX figures only")
    p.add_argument("--out", default="bench/results/conv_ops.json")
    args = p.parse_args(argv)
    shapes = SHAPES
    if args.tiny:
        shapes = [(name, 2, min(h, 6), min(w, 6), cin, cout)
                  for name, _, h, w, cin, cout in SHAPES[:2]]
        args.repeats = 1
    with_torch = not args.no_torch and torch_models.torch_available()
    results = measure(shapes, args.repeats, with_torch)
    print(format_rows(results))
    routes = ", ".join(f"{r['conv']}: {r['signticket_conv']}" for r in results)
    print(f"ours = signticket's conv ({routes}); "
          "ratio = torch ms / ours ms (above 1: signticket is faster)")
    out = {"machine": report.machine_info(), "tiny": args.tiny, "rows": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
