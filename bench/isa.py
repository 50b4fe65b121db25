"""Cap the instruction set both sides of a benchmark may use, to measure another ISA on one machine.

``python -m bench.suite --isa avx2`` on an AVX-512 machine runs every row as an AVX2-only
machine would, as far as the libraries allow it:

* oneDNN (signticket's convolutions and PyTorch's): ``ONEDNN_MAX_CPU_ISA``;
* PyTorch's own vectorized kernels (BatchNorm, ReLU, pooling, the SGD update):
  ``ATEN_CPU_CAPABILITY``;
* MKL (PyTorch's matmuls and its im2col convolutions): ``MKL_ENABLE_INSTRUCTIONS``;
* XLA's generated code (fusions, the rest of the step): ``--xla_cpu_max_isa`` in ``XLA_FLAGS``.

YNNPACK (XLA's dots and reductions) detects the CPU itself and has no such switch, so those stay
on the machine's widest vectors (2-17 % of the suite's steps' time on AVX-512, VGG-11 to the
convnet, by ``python -m bench.profile_step``). Each setting is read once, when its library
starts, so the cap has to be in the environment before the process begins: :func:`run_capped`
runs the benchmark in a child process with it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence

from signticket._xla_flags import MAX_ISA_FLAG as XLA_FLAG

#: --isa value -> the settings: environment variables, and XLA's flag under "xla_cpu_max_isa"
CAPS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "xla_cpu_max_isa": "AVX2"},
}


def _caps(isa: str) -> dict[str, str]:
    if isa not in CAPS:
        raise ValueError(f"unknown ISA cap {isa!r}; available: {', '.join(sorted(CAPS))}")
    return CAPS[isa]


def capped_env(isa: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the caps for ``isa`` (replacing an earlier ``--xla_cpu_max_isa``)."""
    caps = dict(_caps(isa))
    flags = re.sub(rf"{XLA_FLAG}=\S*", "", environ.get("XLA_FLAGS", "")).split()
    xla = f"{XLA_FLAG}={caps.pop('xla_cpu_max_isa')}"
    return {**environ, **caps, "XLA_FLAGS": " ".join([*flags, xla])}


def state(environ: Mapping[str, str] = os.environ) -> dict[str, str | None]:
    """The caps in effect (``None``: not set): what the results file records."""
    xla = re.search(rf"{XLA_FLAG}=(\S+)", environ.get("XLA_FLAGS", ""))
    names = [k for k in next(iter(CAPS.values())) if k != "xla_cpu_max_isa"]
    return {**{k: environ.get(k) for k in names}, "xla_cpu_max_isa": xla.group(1) if xla else None}


def is_capped(isa: str, environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` already holds exactly the caps for ``isa``."""
    return state(environ) == _caps(isa)


def label(recorded: Mapping[str, str | None]) -> str:
    """``""`` with no cap, else the caps of a :func:`state` for the machine line."""
    caps = {k: v for k, v in recorded.items() if v}
    return f", ISA capped: {', '.join(f'{k}={v}' for k, v in caps.items())}" if caps else ""


def run_capped(isa: str, module: str, argv: Sequence[str]) -> int:
    """Run ``python -m module argv`` in a child process with the caps for ``isa``; its exit
    status. (A child rather than ``exec``: the caller may be a test's process.)"""
    return subprocess.run([sys.executable, "-m", module, *argv],
                          env=capped_env(isa, os.environ)).returncode
