#!/usr/bin/env bash
# Idempotent setup: Python deps, the offline Fashion-MNIST files, and its TFDS preparation.
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

# Reinstall when a dependency is missing or `signticket` resolves to another checkout.
HERE="$(pwd -P)"
if ! (cd / && "$PY" - "$HERE" <<'PYEOF'
import importlib, os, sys
for mod in ("jax", "flax", "optax", "orbax.checkpoint", "chex", "tensorflow_datasets",
            "ml_collections", "scipy", "tqdm", "matplotlib", "pytest", "xdist", "pytest_timeout",
            "ruff"):
    importlib.import_module(mod)
import signticket
assert os.path.realpath(signticket.__file__).startswith(sys.argv[1] + os.sep)
import platform
from signticket.native import build
if (platform.system(), platform.machine()) == ("Linux", "x86_64"):  # the `cpu` extra's wheels
    assert build.onednn_prefix() is not None
PYEOF
) >/dev/null 2>&1; then
  echo "== installing signticket and its dependencies"
  # `all`: TFDS + TensorFlow (data), matplotlib (figures) and oneDNN's wheels for the fast CPU
  # convolutions (Linux x86-64 only; a no-op elsewhere); `test`: pytest, chex, ruff.
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".[all,test]"
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  echo "== installing the offline Fashion-MNIST (Debian package dataset-fashion-mnist)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

if ! command -v g++ >/dev/null 2>&1; then
  echo "== installing a C++ compiler (oneDNN convolutions are built against the installed jaxlib)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++
fi

echo "== building the oneDNN convolution library (CPU; skipped when already built)"
"$PY" -m signticket.native || echo "   (convolutions will run on XLA's own kernels)"

echo "== preparing fashion_mnist (TFDS, offline)"
"$PY" -m signticket.data.prepare fashion_mnist
