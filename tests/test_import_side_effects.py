"""`import signticket` (and its core modules) changes no process state; the CPU tuning is an
explicit call that must come before JAX starts its backend."""

import json
import os
import subprocess
import sys

CHECK = """
import json, os, sys
before = os.environ.get("XLA_FLAGS")
import signticket
from signticket import masks, signs, tree, _host_malloc
after_import = os.environ.get("XLA_FLAGS")
applied_on_import = _host_malloc.applied()
from signticket import cpu_tuning
effects = cpu_tuning.apply()
print(json.dumps({"before": before, "after_import": after_import,
                  "malloc_on_import": applied_on_import, "after_apply": os.environ.get("XLA_FLAGS"),
                  "effects": effects, "version": signticket.__version__}))
"""


def _run(code: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("XLA_FLAGS", "SIGNTICKET_XLA_DEFAULTS", "SIGNTICKET_MALLOC_DEFAULTS")}
    out = subprocess.run([sys.executable, "-c", code], env={**environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_changes_no_process_state():
    report = _run(CHECK, XLA_FLAGS="--xla_dump_to=/nonexistent-unused")
    assert report["after_import"] == report["before"] == "--xla_dump_to=/nonexistent-unused"
    assert report["malloc_on_import"] is False
    assert report["version"] and report["version"] != "0+unknown"


def test_cpu_tuning_is_explicit_and_keeps_user_flags():
    report = _run(CHECK, XLA_FLAGS="--xla_dump_to=/nonexistent-unused", JAX_PLATFORMS="cpu")
    assert report["after_apply"].startswith("--xla_dump_to=/nonexistent-unused")
    assert report["effects"]["xla_flags"] is ("--xla_cpu_experimental_ynn_fusion_type"
                                              in report["after_apply"])


def test_cpu_tuning_after_backend_start_warns():
    code = """
import warnings, jax, jax.numpy as jnp
jnp.ones(3).block_until_ready()
from signticket import cpu_tuning
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cpu_tuning.apply()
print('{"warned": %s}' % str(any("after JAX started" in str(w.message) for w in caught)).lower())
"""
    assert _run(code)["warned"] is True


def test_cli_version():
    out = subprocess.run([sys.executable, "-m", "signticket.cli", "--version"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("signticket "), out.stderr


# The core: pure pytree functions and optax transforms, usable from any JAX code.
CORE = ("tree", "masks", "signs", "optim", "sign_in", "dst", "rigl", "acdc", "str_sparsity",
        "curvature", "sign_metrics", "rebasin", "lmc")
# What the lab brings (models, runs, data, plots, native kernels, torch baselines).
LAB_ONLY = ("flax", "orbax", "tensorflow", "tensorflow_datasets", "ml_collections", "matplotlib",
            "torch", "tqdm", "chex", "signticket.train", "signticket.runs", "signticket.native")


def test_core_imports_with_jax_optax_numpy_scipy_only():
    code = f"""
import json, sys
for name in {CORE!r}:
    __import__("signticket." + name)
print(json.dumps(sorted(m for m in {LAB_ONLY!r} if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_missing_extras_name_the_extra(monkeypatch):
    """Without the `data` / `plots` extras, data and figures fail with one line naming the
    extra to install (a UserError the CLI prints), not an ImportError traceback."""
    import pytest

    from signticket.data import tfds_source
    from signticket.errors import MissingExtraError, UserError

    for module in ("tensorflow_datasets", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'signticket\[data\]'"):
        tfds_source.import_tfds()
    from signticket.experiments import common

    with pytest.raises(UserError, match=r"pip install 'signticket\[plots\]'"):
        common.pyplot()
