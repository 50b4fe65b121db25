"""Keep freed host memory in the process when JAX runs on the CPU backend (glibc only).

XLA's CPU runtime allocates each execution's temporaries as one buffer (71 MB for the convnet
step, hundreds of MB for ResNet-20) and frees it when the step ends. glibc serves any request
above 32 MB with a fresh ``mmap`` (and XLA's worker threads, which use their own malloc
arenas, fall back to ``mmap`` for anything larger than an arena), so every step pays one page
fault per 4 KiB of temporaries: 17,400 faults and ~30 ms of the convnet's ~75 ms step on 2
cores. Serving every thread from the main heap (``M_ARENA_MAX = 1``), never from ``mmap``
(``M_MMAP_MAX = 0``), and not trimming the heap's free top back to the OS below 2 GiB
(``M_TRIM_THRESHOLD``) makes the buffer reused instead: zero faults per step.

The cost is that the process keeps its peak heap size instead of returning freed blocks. Like
the XLA flags, this has to happen before JAX creates its CPU backend (``import signticket``
does it); it is skipped off glibc, when an accelerator plugin is installed (unless
``JAX_PLATFORMS=cpu``), and with ``SIGNTICKET_MALLOC_DEFAULTS=0``. ``python -m bench.suite
--only malloc`` measures it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform

ENV = "SIGNTICKET_MALLOC_DEFAULTS"
# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = {M_ARENA_MAX: 1, M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
# Packages whose presence means JAX will prefer an accelerator backend over the CPU.
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "libtpu")

_applied = False


def cpu_backend_expected() -> bool:
    """Whether JAX will run on its CPU backend: ``JAX_PLATFORMS`` says cpu, or it names
    nothing and no accelerator plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt`` when the CPU backend is expected.

    Returns whether the settings are in effect (idempotent).
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    if not cpu_backend_expected():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _applied


def applied() -> bool:
    """Whether :func:`keep_freed_memory` has put the settings in effect in this process."""
    return _applied
