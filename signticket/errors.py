"""The one exception type for mistakes in what the user asked for.

Anything raised as :class:`UserError` (bad config values, unknown names, a run directory in use,
a corrupt run directory, a full disk) is a problem with the input or the machine, not a bug: the
command line prints its message as one line and exits with code 2. Every other exception is a
bug and keeps its traceback, so catching ``ValueError`` or ``TypeError`` broadly is never needed.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the input (config, arguments, files on disk) that the user can fix.

    A ``ValueError`` so that library callers that already catch ``ValueError`` keep working.
    The message names the problem and, where there is one, the fix.
    """
