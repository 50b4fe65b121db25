"""Build (once) and locate the oneDNN convolution library behind :mod:`signticket.native.conv`.

    python -m signticket.native               # build now; prints the library's path

The C++ source ships with the package; it is compiled against jaxlib's XLA FFI headers and the
oneDNN wheel (``onednn-cpu-gomp`` + ``onednn-devel-cpu-gomp``, the ``cpu`` extra on Linux
x86-64) at setup (``scripts/setup.sh`` runs this module), never while a model is traced, into a
cache directory keyed by the source, jaxlib and oneDNN, so a rebuild
happens only when one of them changes. Nothing here is needed for correctness: without a
compiler or oneDNN, :func:`library_path` returns ``None`` with the reason and convolutions stay
on XLA.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("onednn_conv.cc")
#: what SOURCE includes from this directory (part of the build's cache key)
HEADERS = (Path(__file__).with_name("team_placement.h"),)
LIBRARY_NAME = "libsignticket_onednn_conv.so"


def cache_dir() -> Path:
    """Where built libraries live: ``$SIGNTICKET_NATIVE_CACHE``, else ``~/.cache/signticket``."""
    root = os.environ.get("SIGNTICKET_NATIVE_CACHE") or Path.home() / ".cache" / "signticket"
    return Path(root) / "native"


def onednn_prefix() -> Path | None:
    """The install prefix holding oneDNN's header and shared library, if any."""
    for prefix in (Path(sys.prefix), Path(sys.base_prefix), Path("/usr/local"), Path("/usr")):
        header = prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
        libs = [prefix / "lib" / "libdnnl.so", prefix / "lib" / "x86_64-linux-gnu" / "libdnnl.so"]
        if header.is_file() and any(lib.exists() for lib in libs):
            return prefix
    return None


def compiler() -> str | None:
    """The C++ compiler the build uses: ``$CXX``, else ``g++`` or ``c++`` on the PATH."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _key(prefix: Path) -> str:
    import jaxlib

    digest = hashlib.sha256(SOURCE.read_bytes())
    for header in HEADERS:
        digest.update(header.read_bytes())
    digest.update(jaxlib.__version__.encode())
    for lib in sorted(prefix.glob("lib*/libdnnl.so*")) + sorted(prefix.glob("lib/*/libdnnl.so*")):
        digest.update(f"{lib}:{lib.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def library_path(build: bool = True) -> tuple[Path | None, str]:
    """``(path, "")`` of the built library, building it when missing and ``build`` is set;
    ``(None, reason)`` when it cannot be had."""
    prefix = onednn_prefix()
    if prefix is None:
        return None, ("oneDNN not found; for fast CPU convolutions install the `cpu` extra "
                      "(`pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0`, "
                      "Linux x86-64), then build with `python -m signticket.native`")
    target = cache_dir() / _key(prefix) / LIBRARY_NAME
    if target.is_file():
        return target, ""
    if not build:
        return None, f"not built yet (`python -m signticket.native`): {target}"
    cxx = compiler()
    if cxx is None:
        return None, "no C++ compiler (g++) found; `apt-get install -y g++`"
    import jax

    print(f"signticket: building the oneDNN convolution library (once) into {target.parent}",
          file=sys.stderr)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return None, f"cannot create {target.parent} ({e}); set SIGNTICKET_NATIVE_CACHE"
    libdirs = [d for d in (prefix / "lib", prefix / "lib" / "x86_64-linux-gnu") if d.is_dir()]
    # Build to a temporary name and rename: concurrent builders (pytest-xdist workers) never
    # load a half-written library.
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    # -fopenmp: team placement pins the GNU OpenMP workers oneDNN runs on (same libgomp).
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w",
           f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}", str(SOURCE), "-o", str(partial),
           *(f"-L{d}" for d in libdirs), "-ldnnl", *(f"-Wl,-rpath,{d}" for d in libdirs)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        return None, f"building {SOURCE.name} failed:\n{result.stderr[-2000:]}"
    partial.replace(target)
    return target, ""


def main() -> None:
    path, reason = library_path(build=True)
    if path is None:
        print(f"signticket: oneDNN convolutions unavailable: {reason}", file=sys.stderr)
        raise SystemExit(1)
    print(path)

