"""Run directories derived from configs (OpenLTH-style) and orbax checkpoints with resume.

A run's directory is ``<root>/<name>-<hash of its config>``: the same config always maps to the
same directory, so a finished run is reused and a killed run resumes; a changed config maps to a
new directory, so results of different configs never mix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from signticket.errors import UserError
from signticket.tree import copy_arrays

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
DONE_FILE = "DONE.json"
#: Sketches of the arrays a run started from (``signticket.run_desc.check_inputs``).
INPUTS_FILE = "inputs.json"
LOCK_FILE = "LOCK"
CHECKPOINTS = "checkpoints"
#: Prefix of checkpoint steps moved aside as corrupt (orbax ignores non-numeric names).
CORRUPT_PREFIX = "corrupt-"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or run directory is unreadable, corrupt or incompatible.

    (A ``RuntimeError`` too, as it was before :class:`~signticket.errors.UserError` existed.)"""


class RunLockedError(UserError):
    """Another process is training in the same run directory."""


class NoIntactCheckpointError(CheckpointError):
    """Every checkpoint step of a run was damaged (and has been moved aside)."""


class CheckpointSaveError(UserError):
    """A checkpoint could not be written (full disk, read-only or vanished directory)."""


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


def is_primary() -> bool:
    """Whether this process writes the files all processes of a multi-host run share (configs,
    metrics, DONE markers, results): process 0. Every process computes the same values, so
    the others would only race it for the same file. (Checkpoints are orbax's: every process
    takes part in a save and orbax decides who writes what.)"""
    return jax.process_index() == 0


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so a reader never sees a half-written file (temp file + rename); only the
    primary process writes (:func:`is_primary`)."""
    if not is_primary():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def check_runs_root(root: str | os.PathLike) -> Path:
    """``root`` as a Path, or a :class:`UserError` if it cannot hold run directories (it is a
    file, or it or its nearest existing parent is not writable). Cheap: call it before loading
    data so a bad ``--runs-root`` fails in a second, not after training."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"runs root {root} exists and is not a directory; pass a directory "
                        "(--runs-root or SIGNTICKET_RUNS)")
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"runs root {root} is not writable ({existing} is read-only to this "
                        "user); pass a writable directory (--runs-root or SIGNTICKET_RUNS)")
    return root


#: Top-level config keys that do not name a run: how it is logged and how often it saves change
#: no result, so runs that differ only there share a directory (and a config without them keeps
#: its old hash).
UNHASHED_KEYS = ("logging", "checkpoint_min_interval_s")


def run_identity(config: Any) -> dict[str, Any]:
    """The part of ``config`` that names a run (hashed, stored in ``config.json``): all of it
    but :data:`UNHASHED_KEYS`."""
    plain = json.loads(canonical_json(config))
    if isinstance(plain, dict):
        for key in UNHASHED_KEYS:
            plain.pop(key, None)
    return plain


def run_dir(root: str | os.PathLike, config: Any, name: str = "run") -> Path:
    """The directory of the run described by ``config`` (created, with ``config.json``).

    The directory is named by the hash of :func:`run_identity`. ``config.json`` holds that
    identity plus, under :data:`~signticket.provenance.PROVENANCE_KEY`, the provenance of the
    code that created the directory (ignored when comparing, so any code may reuse it)."""
    from signticket import provenance

    root = check_runs_root(root)
    identity = run_identity(config)
    path = root / f"{name}-{config_hash(identity)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        raise UserError(f"cannot create run directory {path}: {e.strerror or e}; pass a "
                        "writable directory (--runs-root or SIGNTICKET_RUNS)") from e
    cfg_file = path / CONFIG_FILE
    expected = identity
    if cfg_file.exists():
        try:
            stored = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(
                f"{cfg_file} is corrupt ({e}); delete {path} to start over"
            ) from e
        if isinstance(stored, dict):
            stored.pop(provenance.PROVENANCE_KEY, None)
        if stored != expected:
            raise CheckpointError(
                f"{path} holds a run of a different config; refusing to mix results "
                f"(delete it or change the runs root)"
            )
    else:
        stamped = dict(expected) if isinstance(expected, dict) else expected
        if isinstance(stamped, dict):
            stamped[provenance.PROVENANCE_KEY] = provenance.collect()
        write_json_atomic(cfg_file, stamped)
    return path


def _lock_holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "a process that has not written its pid yet"


@contextlib.contextmanager
def lock_run_dir(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on run directory ``directory`` (``fcntl.flock`` on its ``LOCK``
    file) for the ``with`` block; the file records the holder's pid.

    A second process (or a second lock in this one) fails at once with :class:`RunLockedError`
    naming the directory and the holder, instead of interleaving checkpoints and metrics with
    the first. The kernel drops the lock when its holder exits, even on SIGKILL, so a killed
    run never leaves a stale lock behind. In a multi-host run only process 0 takes the lock
    (the others are the same run)."""
    if not is_primary():
        yield Path(directory)
        return
    path = Path(directory) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(
            f"run directory {Path(directory)} is in use by {_lock_holder(path)}; wait for that "
            "run to finish (it will be reused) or stop it, then re-run") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield Path(directory)
    finally:
        os.close(fd)  # releases the lock


#: Files every step of our single-item (``StandardSave``) layout holds once written. Only our
#: own layout is checked here; whether a step was committed is left to orbax (``all_steps``).
_STEP_FILES = ("default/_METADATA",)


def _is_step_dir(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit()


def _is_disk_full(e: BaseException | None) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        text = str(e)
        if "RESOURCE_EXHAUSTED" in text or "No space left" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


# Orbax's writer threads report a failed save themselves, many times over: every thread logs
# its exception with a traceback (absl), tensorstore's callbacks hit the closed event loops of
# the failed threads, and asyncio reports futures nobody retrieved. After a save failed for lack
# of space, that echo of the one error :class:`CheckpointSaveError` reports is dropped.
_NOISE_LOGGERS = ("absl", "asyncio")


def _is_save_noise(text: str, exc: BaseException | None) -> bool:
    return (_is_disk_full(exc) or "RESOURCE_EXHAUSTED" in text or "No space left" in text
            or "Event loop is closed" in text or "Save Finalize thread" in text
            or "Handler Commit operations" in text)


class _SaveNoise(logging.Filter):
    """Holds back records of orbax's loggers during a save (replayed if the save succeeds or
    fails for another reason); once :attr:`disk_full`, drops those that echo that failure."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []
        self.held_unraisable: list[Any] = []
        self.unraisable = sys.unraisablehook
        self.holds = 0  # saves under way: one run's last write may end while the next saves
        self._lock = threading.Lock()
        self.disk_full = False

    @property
    def holding(self) -> bool:
        return self.holds > 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.disk_full and _is_save_noise(
                record.getMessage(), record.exc_info[1] if record.exc_info else None):
            return False
        if self.holding:
            self.held.append(record)
            return False
        return True

    def hold(self) -> None:
        """Hold records from now on (a save started; it may finish in the background)."""
        _install_hooks()
        with self._lock:
            self.holds += 1

    def release(self) -> None:
        """A save ended: once none is left under way, replay what was held."""
        with self._lock:
            if self.holds == 0:
                return
            self.holds -= 1
            if self.holds > 0:
                return
        self.replay()

    def replay(self) -> None:
        held_unraisable, self.held_unraisable = self.held_unraisable, []
        if not self.disk_full:
            for info in held_unraisable:
                self.unraisable(info)
        held, self.held = self.held, []
        for record in held:
            if not (self.disk_full and _is_save_noise(
                    record.getMessage(), record.exc_info[1] if record.exc_info else None)):
                logging.getLogger(record.name).handle(record)


_SAVE_NOISE = _SaveNoise()
for _name in _NOISE_LOGGERS:
    logging.getLogger(_name).addFilter(_SAVE_NOISE)


_HOOKS_INSTALLED = False


def _install_hooks() -> None:
    """Route tensorstore's "Event loop is closed" callbacks (printed through
    ``sys.unraisablehook`` / ``sys.excepthook``) through :data:`_SAVE_NOISE` too. Installed on
    the first save; everything else passes to the previous hooks unchanged."""
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    _HOOKS_INSTALLED = True
    unraisable, excepthook = sys.unraisablehook, sys.excepthook

    def loop_closed(exc: BaseException | None) -> bool:
        return isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)

    def on_unraisable(info) -> None:
        if loop_closed(info.exc_value) and (_SAVE_NOISE.holding or _SAVE_NOISE.disk_full):
            if not _SAVE_NOISE.disk_full:
                _SAVE_NOISE.held_unraisable.append(info)
            return
        unraisable(info)

    def on_exception(kind, value, tb) -> None:
        if loop_closed(value) and (_SAVE_NOISE.holding or _SAVE_NOISE.disk_full):
            return  # only ever an echo of a failed save's threads
        excepthook(kind, value, tb)

    sys.unraisablehook, sys.excepthook = on_unraisable, on_exception
    _SAVE_NOISE.unraisable = unraisable


@contextlib.contextmanager
def _quiet_save() -> Iterator[_SaveNoise]:
    _SAVE_NOISE.hold()
    try:
        yield _SAVE_NOISE
    finally:
        _SAVE_NOISE.release()


class Checkpointer:
    """Orbax ``CheckpointManager`` over ``<run dir>/checkpoints``, numbered by epoch.

    Steps that cannot be restored (cut short by a kill or a full disk, files truncated or
    removed) are moved aside to ``checkpoints/corrupt-<step>-<time>`` with one warning naming
    them, and the run resumes from the newest intact step; intact steps are never moved. Use it
    only while holding :func:`lock_run_dir` on the run directory.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 2) -> None:
        self.directory = Path(directory)
        self.max_to_keep = max_to_keep
        self.moved_aside: list[Path] = []
        self._save_failed = False
        self._pending: int | None = None  # a step still being written (save(wait=False))
        # mark_done(wait=False): the thread waiting for the last write, then writing DONE.json
        self._finishing: threading.Thread | None = None
        self._finish_error: BaseException | None = None
        steps = self.directory / CHECKPOINTS
        self._primary = is_primary()
        # Before orbax looks: a numbered directory without the files every finished save
        # writes (a save killed or out of disk, a removed item) would make orbax misread the
        # layout of every step, or block saving that step again.
        if steps.is_dir() and self._primary:
            for path in sorted(steps.iterdir()):
                missing = [f for f in _STEP_FILES if not (path / f).exists()]
                if _is_step_dir(path) and missing:
                    self._move_aside(int(path.name), f"incomplete (no {missing[0]})", reopen=False)
        self.manager = self._open()
        committed = set(self.manager.all_steps())
        for path in sorted(steps.iterdir()) if self._primary else ():
            if _is_step_dir(path) and int(path.name) not in committed:
                self._move_aside(int(path.name), "incomplete (never committed)")

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            (self.directory / CHECKPOINTS).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True),
        )

    def _move_aside(self, step: int, why: str, reopen: bool = True) -> None:
        src = self.directory / CHECKPOINTS / str(step)
        dst = src.with_name(f"{CORRUPT_PREFIX}{step}-{time.strftime('%Y%m%dT%H%M%S')}")
        n = 1
        while dst.exists():
            dst, n = dst.with_name(f"{dst.name}-{n}"), n + 1
        os.replace(src, dst)
        self.moved_aside.append(dst)
        log.warning("checkpoint step %d in %s is %s; moved it aside to %s and resuming from "
                    "the newest intact step", step, self.directory / CHECKPOINTS, why, dst)
        if reopen:
            # A fresh manager: orbax caches the step list and the item layout it inferred
            # from the damaged step, which would make intact steps fail to restore.
            self.manager.close()
            self.manager = self._open()

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, *, wait: bool = True) -> None:
        """Save ``state`` as ``step``.

        With ``wait`` (the default) this returns once the step is on disk. With ``wait=False``
        the files are written in the background while the caller goes on (``fit`` trains the
        next epoch meanwhile), from a private copy of ``state`` (the train step donates its
        state, so the caller's buffers may be overwritten before the write ends); the next
        ``save``, ``wait``, ``restore``, ``mark_done`` or ``close`` waits for it first.

        Raises :class:`CheckpointSaveError` naming the step and directory when the disk is full
        or the directory cannot be written; the previous checkpoint is kept. A background
        write that fails is raised by the call that waits for it, so a run stops at most one
        epoch later and resumes from the last step that was written."""
        self.wait()
        if not wait:
            leaves, treedef = jax.tree.flatten(state)
            at = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)]
            for i, copy in zip(at, copy_arrays([leaves[i] for i in at]), strict=True):
                leaves[i] = copy
            state = treedef.unflatten(leaves)
        self._pending = step
        _SAVE_NOISE.hold()
        try:
            self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        except Exception as e:
            self._pending = None
            self._failed(step, e)
        if wait:
            self.wait()

    def wait(self) -> None:
        """Block until the pending save (if any) is on disk, and a background
        :meth:`mark_done` has written ``DONE.json``; raise their failure."""
        self._join_finishing()
        self._wait_for_write()

    def _join_finishing(self) -> None:
        finishing, self._finishing = self._finishing, None
        if finishing is not None:
            finishing.join()
            error, self._finish_error = self._finish_error, None
            if error is not None:
                raise error

    def _wait_for_write(self) -> None:
        step, self._pending = self._pending, None
        if step is None:
            self.manager.wait_until_finished()
            return
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._failed(step, e)
        _SAVE_NOISE.release()

    def _failed(self, step: int, e: Exception) -> None:
        """Raise the failure of saving ``step`` as :class:`CheckpointSaveError` when it is the
        disk or the directory, else as it is; orbax's echoes of it are held back first."""
        self._save_failed = True
        if _is_disk_full(e):
            _SAVE_NOISE.disk_full = True  # from now on, drop orbax's echoes of it
        _SAVE_NOISE.release()
        where = self.directory / CHECKPOINTS
        if _is_disk_full(e):
            raise CheckpointSaveError(
                f"no space left on the device saving checkpoint step {step} in {where}; free "
                "some space and re-run (the last saved checkpoint is kept and resumed from)"
            ) from e
        if isinstance(e, OSError):
            raise CheckpointSaveError(
                f"cannot save checkpoint step {step} in {where}: {e.strerror or e}") from e
        raise e

    def _intact(self, step: int) -> bool:
        """Whether ``step`` restores at all, without a template (every array read back): tells
        a damaged step from one of a different structure (intact, but not this run's)."""
        try:
            self.manager.restore(step, args=ocp.args.StandardRestore())
        except Exception:
            return False
        return True

    def restore(self, template: Any, step: int | None = None) -> tuple[int, Any]:
        """Restore into the structure, dtypes and shardings of ``template``.

        Tries ``step`` (default: newest). A newest step that is damaged is moved aside (see the
        class docstring) and the next older one is tried. Raises :class:`CheckpointError` if
        no step is left, or if an intact step does not fit ``template`` (a different model).
        """
        self.wait()
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            steps = [step]
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory / CHECKPOINTS}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        for s in steps:
            try:
                return s, self.manager.restore(s, args=ocp.args.StandardRestore(abstract))
            except Exception as e:
                if self._intact(s):
                    raise CheckpointError(
                        f"checkpoint step {s} in {self.directory / CHECKPOINTS} is intact but "
                        f"does not fit this run ({type(e).__name__}: {str(e)[:300]}); the "
                        "directory holds another model's run: change the runs root or remove it"
                    ) from e
                self._move_aside(s, f"damaged ({type(e).__name__})")
        raise NoIntactCheckpointError(
            f"no intact checkpoint left in {self.directory / CHECKPOINTS} (damaged ones moved "
            f"aside: {', '.join(p.name for p in self.moved_aside)}); re-run to start over"
        )

    def mark_done(self, summary: Mapping[str, Any], *, wait: bool = True) -> None:
        """Record that the run finished, with its final summary and the provenance of the code
        that finished it (``"provenance"``, see :mod:`signticket.provenance`), once the last
        save is on disk: ``DONE.json`` never names a run whose checkpoint could be missing.

        With ``wait=False`` a thread waits for that save and then writes ``DONE.json`` while
        the caller goes on (:mod:`signticket.finishing`: the next run trains meanwhile);
        :meth:`wait` or :meth:`close` joins it and raises the save's failure."""
        from signticket import provenance

        self._join_finishing()  # the pending save itself is waited for by _write_done
        record = {**summary, "provenance": provenance.collect()}
        if wait:
            self._write_done(record)
            return

        def finish() -> None:
            try:
                self._write_done(record)
            except BaseException as e:  # raised again by wait()/close() in the caller's thread
                self._finish_error = e

        self._finishing = threading.Thread(target=finish, name=f"finish {self.directory.name}",
                                           daemon=True)
        self._finishing.start()

    def _write_done(self, record: Mapping[str, Any]) -> None:
        self._wait_for_write()
        write_json_atomic(self.directory / DONE_FILE, record)

    def done(self) -> dict[str, Any] | None:
        """The final summary of a finished run, or None (also, with a warning, when DONE.json
        is unreadable or not a summary: the run is then finished again from its checkpoint,
        which rewrites it)."""
        path = self.directory / DONE_FILE
        if not path.exists():
            return None
        try:
            done = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            log.warning("%s is unreadable (%s); finishing the run again to rewrite it", path, e)
            return None
        if not isinstance(done, dict) or not isinstance(done.get("epoch"), int):
            log.warning("%s holds no run summary (%r); finishing the run again to rewrite it",
                        path, done if len(repr(done)) < 80 else type(done).__name__)
            return None
        return done

    def close(self) -> None:
        try:
            self.wait()  # a background save's failure nobody waited for is raised here
        finally:
            try:
                with _quiet_save():
                    self.manager.close()
            except Exception:
                if not self._save_failed:
                    raise
                # The failed save's error again: already raised once, as CheckpointSaveError.
                log.debug("closing %s after a failed save", self.directory, exc_info=True)
