"""Benchmarks: scripts that print figures (never timed assertions in tests).

``python -m bench.suite`` runs them all and prints one table. Importing this package imports
:mod:`signticket` first, so its XLA CPU defaults are in ``XLA_FLAGS`` before JAX starts.
"""

import signticket  # noqa: F401
