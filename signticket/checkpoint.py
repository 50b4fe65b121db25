"""Run directories derived from configs (OpenLTH-style) and orbax checkpoints with resume.

A run's directory is ``<root>/<name>-<hash of its config>``: the same config always maps to the
same directory, so a finished run is reused and a killed run resumes; a changed config maps to a
new directory, so results of different configs never mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
DONE_FILE = "DONE.json"


class CheckpointError(RuntimeError):
    """A checkpoint or run directory is unreadable, corrupt or incompatible."""


def _plain(config: Any) -> Any:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return {str(k): _plain(v) for k, v in sorted(config.items())}
    if isinstance(config, list | tuple):
        return [_plain(v) for v in config]
    return config


def canonical_json(config: Any) -> str:
    """Deterministic JSON of a (nested) config mapping or ``ConfigDict``."""
    return json.dumps(_plain(config), sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Any, length: int = 12) -> str:
    """Short SHA-256 of the canonical JSON of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:length]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so a reader never sees a half-written file (temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def run_dir(root: str | os.PathLike, config: Any, name: str = "run") -> Path:
    """The directory of the run described by ``config`` (created, with ``config.json``)."""
    path = Path(root) / f"{name}-{config_hash(config)}"
    path.mkdir(parents=True, exist_ok=True)
    cfg_file = path / CONFIG_FILE
    expected = json.loads(canonical_json(config))
    if cfg_file.exists():
        try:
            stored = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(
                f"{cfg_file} is corrupt ({e}); delete {path} to start over"
            ) from e
        if stored != expected:
            raise CheckpointError(
                f"{path} holds a run of a different config; refusing to mix results "
                f"(delete it or change the runs root)"
            )
    else:
        write_json_atomic(cfg_file, expected)
    return path


class Checkpointer:
    """Orbax ``CheckpointManager`` over ``<run dir>/checkpoints``, numbered by epoch."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 2) -> None:
        self.directory = Path(directory)
        self.manager = ocp.CheckpointManager(
            (self.directory / "checkpoints").absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Save ``state`` as ``step`` (asynchronously; :meth:`wait` or :meth:`close` to finish)."""
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> tuple[int, Any]:
        """Restore into the structure, dtypes and shardings of ``template``.

        Tries ``step`` (default: newest); when the newest is unreadable, falls back to older ones
        with a warning. Raises :class:`CheckpointError` naming the directory if none restores.
        """
        self.wait()
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            steps = [step]
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory / 'checkpoints'}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        errors = []
        for s in steps:
            try:
                return s, self.manager.restore(s, args=ocp.args.StandardRestore(abstract))
            except Exception as e:
                errors.append(f"step {s}: {type(e).__name__}: {e}")
                log.warning("checkpoint %s/%d unreadable, trying an older one", self.directory, s)
        raise CheckpointError(
            f"checkpoint in {self.directory / 'checkpoints'} is corrupt or incompatible with "
            f"this run ({'; '.join(errors)[:500]}); delete the directory to start over"
        )

    def mark_done(self, summary: Mapping[str, Any]) -> None:
        """Record that the run finished, with its final summary."""
        self.wait()
        write_json_atomic(self.directory / DONE_FILE, dict(summary))

    def done(self) -> dict[str, Any] | None:
        """The final summary of a finished run, or None."""
        path = self.directory / DONE_FILE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is corrupt ({e})") from e

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
