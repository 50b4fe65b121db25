"""Run provenance: which code and which package versions produced a run.

A run directory records it twice, outside the hashed config (so recording it never changes a
run's identity): ``config.json`` holds the provenance of the code that *started* the run (under
:data:`PROVENANCE_KEY`), ``DONE.json`` that of the code that *finished* it (under
``"provenance"``). A finished run reused by different code is reported once, as a warning:
results stay usable, but the reader learns they came from other code.

Collected once per process: the versions cannot change while it runs, and a dirty checkout is
fingerprinted by its diff, so two runs of the same edited tree agree.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import subprocess
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Key of the provenance in ``config.json`` (a leading underscore: never a config key).
PROVENANCE_KEY = "_provenance"

#: Distributions whose versions change numbers: the array stack, the model and optimizer
#: libraries, checkpoints, and this package.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "signticket")

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution in ``names`` (None when absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if out.get("signticket") is None:
        from signticket import __version__

        out["signticket"] = __version__
    return out


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(root: Path = _SOURCE_ROOT) -> dict[str, Any] | None:
    """``{"commit", "dirty", "diff"}`` of the git checkout whose top level is ``root`` (the
    directory holding the ``signticket`` package), or None when the code does not run from a
    checkout. The top level must be ``root`` itself: an installed copy inside some other
    repository (a venv in a project) must not report that repository's commit.

    ``dirty`` counts tracked files only (results and run directories are not code); ``diff`` is
    a short hash of ``git diff HEAD``, so two dirty trees with different edits differ."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root.resolve():
        return None
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    dirty = bool(status.strip())
    state: dict[str, Any] = {"commit": commit.strip(), "dirty": dirty}
    if dirty:
        diff = _git(root, "diff", "HEAD", "--no-ext-diff", "--no-color") or ""
        state["diff"] = hashlib.sha256(diff.encode()).hexdigest()[:12]
    return state


def code_version_of(git: Mapping[str, Any] | None, package_version: str) -> str:
    """One string naming the code: ``git:<commit12>[-dirty.<diff hash>]`` from a checkout,
    else ``signticket <version>`` (an installed package)."""
    if not git:
        return f"signticket {package_version}"
    text = f"git:{str(git['commit'])[:12]}"
    if git.get("dirty"):
        text += f"-dirty.{git.get('diff', '')}"
    return text


@functools.cache
def collect() -> dict[str, Any]:
    """This process's provenance: ``code`` (see :func:`code_version_of`), ``git`` (or None),
    ``packages`` and ``python``. Deterministic for one installation, so a resumed run's files
    equal an uninterrupted run's."""
    packages = package_versions()
    git = git_state()
    return {
        "code": code_version_of(git, str(packages["signticket"])),
        "git": git,
        "packages": packages,
        "python": platform.python_version(),
    }


def code_of(record: Mapping[str, Any] | None, key: str = "provenance") -> str | None:
    """The code version stored under ``key`` of a ``DONE.json`` / ``config.json`` record, or
    None when it has none (written before provenance was recorded)."""
    prov = (record or {}).get(key)
    return prov.get("code") if isinstance(prov, Mapping) else None


def check_reuse(directory: str | Path, done: Mapping[str, Any]) -> str | None:
    """Warn (once per call, not an error) when the finished run in ``directory`` was made by
    other code than this process's, or by code that recorded no provenance. Returns the
    warning's text, or None when the codes agree."""
    theirs, ours = code_of(done), collect()["code"]
    if theirs == ours:
        return None
    made_by = theirs if theirs is not None else "of unknown version (no provenance recorded)"
    text = f"reusing the run in {directory}, made by code {made_by}; this is {ours}"
    log.warning(text)
    return text
