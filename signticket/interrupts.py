"""Ctrl-C that is never lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when the signal is
handled. If that is inside a garbage-collection callback (JAX registers one) or a ``__del__``,
Python only prints "Exception ignored in ..." and goes on: the run trains to its end as if
nobody had pressed Ctrl-C. Inside :func:`ctrl_c_reraised`, a Ctrl-C is also remembered, and
:func:`check` (which ``fit`` calls after every step) raises it again if it was swallowed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_pending = False  # a Ctrl-C arrived and no KeyboardInterrupt has been seen to leave check()


def _on_sigint(signum, frame) -> None:
    global _pending
    _pending = True
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as Python does


@contextlib.contextmanager
def ctrl_c_reraised() -> Iterator[None]:
    """Within the block, a Ctrl-C swallowed where it landed is raised again by :func:`check`.

    Does nothing outside the main thread (only it can handle signals) or when SIGINT has a
    handler other than Python's default (the caller's, or an enclosing block's, stays)."""
    global _pending
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _pending = False
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _pending = False


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C arrived within :func:`ctrl_c_reraised` and was
    swallowed (a KeyboardInterrupt that propagated never comes back here)."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt
