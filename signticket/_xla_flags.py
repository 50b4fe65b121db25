"""XLA CPU defaults that make training several times faster on CPU, applied before JAX starts.

XLA's own CPU convolution emitter computes the *kernel* gradient of a convolution with a slow
generic loop (a 3x3 conv on 32x32x16 activations: ~140 ms for the kernel gradient vs ~10 ms for
the forward pass). Routing dots and elementwise fusions through the YNNPACK library (the
``xla_cpu_experimental_ynn_fusion_type`` flag) brings that to ~20 ms and the whole ResNet-20
train step from ~70 to ~170 img/s on 2 cores; ``python -m bench.suite`` measures it. Reductions
(BatchNorm statistics and their gradients) go through YNNPACK too on jaxlib >= 0.10, where XLA
otherwise rewrites them into slow ``reduce-window`` trees: ResNet-20's step 360 -> 330 ms, the
convnet's 28 -> 24 ms (AVX-512, 3/3 interleaved rounds).

When convolutions run on oneDNN instead (:mod:`signticket.native.conv`, the default on a
single-device CPU backend where oneDNN is installed), YNNPACK's elementwise fusions only slow
down what is left (BatchNorm, ReLU, residual adds): ResNet-20 627 -> 682 img/s, the convnet
8900 -> 10400 img/s without them (2/2 interleaved rounds), so only dots and reductions go to
YNNPACK then. The flag is ignored by GPU/TPU backends. Set ``SIGNTICKET_XLA_DEFAULTS=0`` to
leave ``XLA_FLAGS`` untouched.
"""

from __future__ import annotations

import functools
import os
import re

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# Fusion types with the first jaxlib we ran them on: an unknown XLA flag or enum value aborts
# the process, so older jaxlibs get only the types they are known to accept.
_YNN_TYPES = (
    ("LIBRARY_FUSION_TYPE_DOT", (0, 8, 0)),
    ("LIBRARY_FUSION_TYPE_ELTWISE", (0, 8, 0)),
    ("LIBRARY_FUSION_TYPE_REDUCE", (0, 10, 0)),
)
_MIN_JAXLIB = min(v for _, v in _YNN_TYPES)
# With oneDNN convolutions: dots and reductions, and only together (dots alone measured slower
# than no flag at all), so from the first jaxlib that accepts REDUCE.
_YNN_TYPES_WITH_ONEDNN = ("LIBRARY_FUSION_TYPE_DOT", "LIBRARY_FUSION_TYPE_REDUCE")
_MIN_JAXLIB_WITH_ONEDNN = (0, 10, 0)


def ynn_value(jaxlib: tuple[int, ...], onednn_convs: bool = False) -> str:
    """The ``--xla_cpu_experimental_ynn_fusion_type`` value for a jaxlib version, with
    convolutions on oneDNN or on XLA (``""``: leave the flag out)."""
    if onednn_convs:
        return ",".join(_YNN_TYPES_WITH_ONEDNN) if jaxlib >= _MIN_JAXLIB_WITH_ONEDNN else ""
    return ",".join(t for t, since in _YNN_TYPES if jaxlib >= since)


def onednn_convs_expected(xla_flags: str) -> bool:
    """Whether this process will run its convolutions on oneDNN: not opted out, one CPU device
    (several would keep XLA's convs) and the conv library built (``python -m
    signticket.native``)."""
    if os.environ.get("SIGNTICKET_CONV", "auto") == "xla":
        return False
    devices = re.search(r"--xla_force_host_platform_device_count=(\d+)", xla_flags)
    if devices and int(devices.group(1)) > 1:
        return False
    from signticket.native import build

    return build.library_path(build=False)[0] is not None


def _jaxlib_version() -> tuple[int, ...]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in version("jaxlib").split(".")[:3] if p.isdigit())
    except (PackageNotFoundError, ValueError):
        return ()


def apply_cpu_defaults() -> bool:
    """Append the YNNPACK fusion flag to ``XLA_FLAGS`` unless the user set it or opted out.

    Must run before JAX creates its CPU backend (:func:`signticket.cpu_tuning.apply` calls
    it); returns
    whether the flag is now in effect for backends created from here on.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG in flags:
        return True
    jaxlib = _jaxlib_version()
    if os.environ.get("SIGNTICKET_XLA_DEFAULTS", "1") == "0" or jaxlib < _MIN_JAXLIB:
        return False
    value = ynn_value(jaxlib, onednn_convs_expected(flags))
    if not value:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}={value}".strip()
    return True


_DOT = "LIBRARY_FUSION_TYPE_DOT"


def conv_free_options(xla_flags: str | None = None) -> dict[str, str]:
    """Per-program XLA options for a model without convolutions: the YNNPACK fusion types of
    ``XLA_FLAGS`` less dots, which then run on XLA's own kernels.

    Measured on the permuted-masks MLP (``docs/performance.md``): its step alone is ~15 %
    faster that way, and runs side by side in one program (:func:`signticket.fit.fit_lockstep`)
    then overlap on the cores, where YNNPACK's dots serialize them. Empty (nothing changes)
    when the flag holds no dots or ``SIGNTICKET_XLA_DEFAULTS=0``. Read from the environment
    each time, so every process given the same ``XLA_FLAGS`` compiles the same program."""
    if os.environ.get("SIGNTICKET_XLA_DEFAULTS", "1") == "0":
        return {}
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    found = re.findall(rf"{YNN_FLAG}=(\S*)", flags)
    if not found or _DOT not in found[-1].split(","):
        return {}
    rest = ",".join(t for t in found[-1].split(",") if t and t != _DOT)
    return {YNN_FLAG.lstrip("-"): rest}


def llvm_o1_options() -> dict[str, int]:
    """Per-program XLA options: LLVM at -O1 (XLA's default is -O3).

    * A model's init (mostly the initializers' random-number kernels, one per parameter shape,
      where -O3's loop passes are most of the compile of a program run once per run): the
      variables are bit-identical to the default's (``python -m bench.init_compile`` checks
      every registered model), so run directories made before stay valid.
    * The train and eval steps of conv-free models: the permuted-masks MLP's step 1.01-1.17x
      faster in two runs, bit-identical (``python -m bench.step_options``). Why not conv
      models: :func:`signticket.cpu_tuning.program_options`.

    Figures in ``docs/performance.md``. Empty with ``SIGNTICKET_XLA_DEFAULTS=0``."""
    if os.environ.get("SIGNTICKET_XLA_DEFAULTS", "1") == "0":
        return {}
    return {"xla_backend_optimization_level": 1}


MAX_ISA_FLAG = "--xla_cpu_max_isa"


@functools.cache
def _host_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False  # not Linux: assume the common denominator


def xla_cpu_targets_avx512(xla_flags: str | None = None) -> bool:
    """Whether XLA's CPU code in this process uses AVX-512: the host has it (``avx512f`` in
    ``/proc/cpuinfo``) and ``--xla_cpu_max_isa`` in ``XLA_FLAGS`` does not cap it below.
    Read from the environment each time, like :func:`conv_free_options`."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    caps = re.findall(rf"{MAX_ISA_FLAG}=(\S*)", flags)
    if caps and not caps[-1].upper().startswith(("AVX512", "AMX")):
        return False
    return _host_has_avx512()
