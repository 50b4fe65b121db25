"""signticket: sparse networks from random init by getting the signs right (AWS, permuted LTH
masks, Sign-In) as pytree transforms and optax transformations in JAX."""

from signticket._xla_flags import apply_cpu_defaults

apply_cpu_defaults()
