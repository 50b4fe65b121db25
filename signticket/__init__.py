"""signticket: sparse networks from random init by getting the signs right (AWS, permuted LTH
masks, Sign-In) as pytree transforms and optax transformations in JAX."""

from signticket._host_malloc import keep_freed_memory
from signticket._xla_flags import apply_cpu_defaults

# Both must run before JAX creates its CPU backend; see their modules for what they change.
apply_cpu_defaults()
keep_freed_memory()
