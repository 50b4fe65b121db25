"""Benchmarks: scripts that print figures (never timed assertions in tests).

``python -m bench.suite`` runs them all and prints one table. Importing this package applies
signticket's CPU tuning (:func:`signticket.cpu_tuning.apply`) before JAX starts, as the CLI does.
"""

from signticket import cpu_tuning

cpu_tuning.apply()
