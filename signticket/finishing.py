"""Runs finished in the background: a pipeline's next run trains while the last one's final
checkpoint is written.

A run's epochs overlap their checkpoint writes with the next epoch, but its last write had
nothing to overlap: ``DONE.json`` waits for it, so every one-epoch run (an IMP round) waited a
whole write (what that costs: ``docs/performance.md``). Inside :func:`background_finishes`
(the CLI's commands and :func:`signticket.lottery.imp` enter it)
:func:`signticket.runs.train_run` returns once the last write is started; a thread waits for
it and then writes ``DONE.json``, and the run directory stays locked until then. The run's
result (final state, test metrics) is in memory already, and no pipeline reads a run it has
just trained back from disk.

What is kept:

- ``DONE.json`` is still written only after the last checkpoint is on disk. A process killed
  meanwhile leaves the run without it, and a re-run finishes it from its last intact
  checkpoint, to the same numbers.
- A write that fails is raised, as :class:`~signticket.checkpoint.CheckpointSaveError` naming
  the step and directory, at the end of the next run or when the block is left: at most one
  run later, as a failed epoch write is at most one epoch later.
- A run directory trained again in the same block (a reused run) waits for its finish first.

Single-process only: with several processes every one takes part in orbax's saves, and the
finish is left where all of them wait for it together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import jax

from signticket.checkpoint import Checkpointer

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class _Finish:
    """A run whose last write (then ``DONE.json``) is under way: its checkpointer and what
    closes the rest of it (the run directory's lock)."""

    directory: Path
    checkpointer: Checkpointer
    rest: contextlib.ExitStack

    def close(self) -> None:
        try:
            self.checkpointer.close()  # joins the finish; raises a failed write
        finally:
            self.rest.close()


_pending: list[_Finish] | None = None  # None: not inside background_finishes()


def active() -> bool:
    """Whether runs that end now may finish in the background."""
    return _pending is not None


@contextlib.contextmanager
def background_finishes() -> Iterator[None]:
    """Let the runs trained inside the block finish in the background; every finish has ended
    (and raised its failure) when the block is left. Nested blocks are the outer one."""
    global _pending
    if _pending is not None or jax.process_count() > 1:
        yield
        return
    _pending = []
    failed = True
    try:
        yield
        failed = False
    finally:
        pending, _pending = _pending, None
        _close(pending, raise_first=not failed)


def defer(directory: Path, checkpointer: Checkpointer, rest: contextlib.ExitStack) -> None:
    """Close ``checkpointer`` (after its background :meth:`~Checkpointer.mark_done`) and
    ``rest`` later: when the next run ends, when ``directory`` is trained again, or when the
    block is left. Earlier runs' finishes are closed first: each had a whole run to end."""
    if _pending is None:
        raise RuntimeError("finishing.defer() needs an enclosing background_finishes() block "
                           "(check finishing.active() first)")
    earlier, _pending[:] = list(_pending), [_Finish(Path(directory), checkpointer, rest)]
    _close(earlier, raise_first=True)


def settle(directory: Path) -> None:
    """Close the pending finish of ``directory`` (a run about to be trained again), raising
    its failure."""
    global _pending
    if not _pending:
        return
    same = [f for f in _pending if f.directory == Path(directory)]
    _pending = [f for f in _pending if f not in same]
    _close(same, raise_first=True)


def _close(finishes: list[_Finish], raise_first: bool) -> None:
    first: BaseException | None = None
    for finish in finishes:
        try:
            finish.close()
        except BaseException as e:
            if first is None and raise_first:
                first = e
            else:  # the block is left by another exception, or a second failure
                log.error("finishing the run in %s failed: %s", finish.directory, e)
    if first is not None:
        raise first
