"""The one exception type for mistakes in what the user asked for.

Anything raised as :class:`UserError` (bad config values, unknown names, a run directory in use,
a corrupt run directory, a full disk) is a problem with the input or the machine, not a bug: the
command line prints its message as one line and exits with code 2. Every other exception is a
bug and keeps its traceback, so catching ``ValueError`` or ``TypeError`` broadly is never needed.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(ValueError):
    """A mistake in the input (config, arguments, files on disk) that the user can fix.

    A ``ValueError`` so that library callers that already catch ``ValueError`` keep working.
    The message names the problem and, where there is one, the fix.
    """


class MissingExtraError(UserError):
    """An optional package is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError`: ``purpose`` needs the ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{purpose} needs the package {module!r}, which is not installed: "
            f"pip install 'signticket[{extra}]'") from e
