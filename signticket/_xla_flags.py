"""XLA CPU defaults that make training several times faster on CPU, applied before JAX starts.

XLA's own CPU convolution emitter computes the *kernel* gradient of a convolution with a slow
generic loop (a 3x3 conv on 32x32x16 activations: ~140 ms for the kernel gradient vs ~10 ms for
the forward pass). Routing dots and elementwise fusions through the YNNPACK library (the
``xla_cpu_experimental_ynn_fusion_type`` flag) brings that to ~20 ms and the whole ResNet-20
train step from ~70 to ~170 img/s on 2 cores; ``python -m bench.suite`` measures it. Reductions
(BatchNorm statistics and their gradients) go through YNNPACK too on jaxlib >= 0.10, where XLA
otherwise rewrites them into slow ``reduce-window`` trees: ResNet-20's step 360 -> 330 ms, the
convnet's 28 -> 24 ms (AVX-512, 3/3 interleaved rounds). The flag is ignored by GPU/TPU
backends. Set ``SIGNTICKET_XLA_DEFAULTS=0`` to leave ``XLA_FLAGS`` untouched.
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# Fusion types with the first jaxlib we ran them on: an unknown XLA flag or enum value aborts
# the process, so older jaxlibs get only the types they are known to accept.
_YNN_TYPES = (
    ("LIBRARY_FUSION_TYPE_DOT", (0, 8, 0)),
    ("LIBRARY_FUSION_TYPE_ELTWISE", (0, 8, 0)),
    ("LIBRARY_FUSION_TYPE_REDUCE", (0, 10, 0)),
)
_MIN_JAXLIB = min(v for _, v in _YNN_TYPES)


def ynn_value(jaxlib: tuple[int, ...]) -> str:
    """The ``--xla_cpu_experimental_ynn_fusion_type`` value for a jaxlib version."""
    return ",".join(t for t, since in _YNN_TYPES if jaxlib >= since)


def _jaxlib_version() -> tuple[int, ...]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in version("jaxlib").split(".")[:3] if p.isdigit())
    except (PackageNotFoundError, ValueError):
        return ()


def apply_cpu_defaults() -> bool:
    """Append the YNNPACK fusion flag to ``XLA_FLAGS`` unless the user set it or opted out.

    Must run before JAX creates its CPU backend (``signticket`` calls it on import); returns
    whether the flag is now in effect for backends created from here on.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG in flags:
        return True
    jaxlib = _jaxlib_version()
    if os.environ.get("SIGNTICKET_XLA_DEFAULTS", "1") == "0" or jaxlib < _MIN_JAXLIB:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}={ynn_value(jaxlib)}".strip()
    return True
