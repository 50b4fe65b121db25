"""signticket: sparse networks from random init by getting the signs right (AWS, permuted LTH
masks, Sign-In) as pytree transforms and optax transformations in JAX.

Importing it changes nothing in the process: the CPU tuning the command line and experiments
use is an explicit call, :func:`signticket.cpu_tuning.apply`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("signticket")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
