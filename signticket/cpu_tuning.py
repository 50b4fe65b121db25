"""Process-wide CPU settings for training on JAX's CPU backend, applied only when asked.

``import signticket`` changes nothing in the process; the CLI, the experiment scripts, the
benchmarks and the tests call :func:`apply` first thing, before JAX creates its backend:

* the YNNPACK fusion flag in ``XLA_FLAGS`` (:mod:`signticket._xla_flags`: dots, reductions
  and, without oneDNN convolutions, elementwise fusions), ignored by GPU/TPU backends;
* glibc's allocator keeping freed memory for reuse (:mod:`signticket._host_malloc`), only when
  the CPU backend is expected.

Your own script can do the same (``from signticket import cpu_tuning; cpu_tuning.apply()``
before any JAX computation); ``SIGNTICKET_XLA_DEFAULTS=0`` / ``SIGNTICKET_MALLOC_DEFAULTS=0``
opt out of either part.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from signticket._host_malloc import keep_freed_memory
from signticket._xla_flags import apply_cpu_defaults, conv_free_options, llvm_o1_options


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def apply() -> dict[str, bool]:
    """Apply both settings (idempotent); returns which are in effect. Warns when JAX's
    backend already exists, since the XLA flag then no longer reaches it."""
    if _backend_started():
        warnings.warn("signticket.cpu_tuning.apply() after JAX started its backend: the XLA "
                      "flags reach only backends created later; call it before any JAX "
                      "computation", RuntimeWarning, stacklevel=2)
    return {"xla_flags": apply_cpu_defaults(), "host_malloc": keep_freed_memory()}


def program_options(variables) -> dict[str, Any]:
    """XLA compiler options for the train and eval programs of a model with ``variables``
    (arrays or shapes): for a model with no convolution kernel (no param of rank > 2) on the
    CPU backend, :func:`signticket._xla_flags.conv_free_options` and
    :func:`signticket._xla_flags.llvm_o1_options`; else none.

    Why conv models keep XLA's default LLVM level (-O3): -O1 made the convnet's step
    1.04-1.10x faster but MobileNetV2's 0.76-0.94x (its depthwise convs are shifted slices,
    which XLA's own loops compute), and it rounds some of the convnet's results differently
    (~3e-8 after a step); ``python -m bench.step_options``, figures in ``docs/performance.md``."""
    import jax

    if jax.default_backend() != "cpu":
        return {}
    if any(len(x.shape) > 2 for x in jax.tree.leaves(variables.get("params", variables))):
        return {}
    return {**llvm_o1_options(), **conv_free_options()}


def init_program_options() -> dict[str, int]:
    """XLA compiler options for a model's init program: on the CPU backend,
    :func:`signticket._xla_flags.llvm_o1_options` (same variables, a fraction of the
    compile); else none."""
    import jax

    return llvm_o1_options() if jax.default_backend() == "cpu" else {}
