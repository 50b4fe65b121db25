"""Permutations as ``{name: int array}`` dicts: identity, random, inverse, composition, checks.

Convention (as Git Re-Basin): applying ``perm`` to an axis gathers ``x_new[i] = x[perm[i]]``,
i.e. ``jnp.take(x, perm, axis)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from signticket.rebasin.spec import Perms, PermutationSpec


def identity_perms(spec: PermutationSpec) -> Perms:
    """``perm[i] = i`` for every permutation of ``spec``."""
    return {p: jnp.arange(n, dtype=jnp.int32) for p, n in spec.sizes.items()}


def random_perms(key: jax.Array, spec: PermutationSpec) -> Perms:
    """Independent uniformly random permutations, one per name, determined by ``key``.

    Drawn on the host (numpy seeded from the key's bits): a concrete utility for building
    permuted copies and controls, cheaper than compiling a shuffle per distinct size.
    """
    if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    rng = np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())
    return {p: jnp.asarray(rng.permutation(spec.sizes[p]), jnp.int32) for p in spec.names}


def invert(perms: Perms) -> Perms:
    """``inv[perm[i]] = i``, so applying ``perm`` then ``inv`` is the identity."""
    return {p: jnp.argsort(v).astype(jnp.int32) for p, v in perms.items()}


def compose(first: Perms, then: Perms) -> Perms:
    """The permutation that applies ``first`` and then ``then``: ``first[then]``.

    (Applying ``first`` gives ``y[i] = x[first[i]]``; then ``z[i] = y[then[i]] =
    x[first[then[i]]]``.)
    """
    if set(first) != set(then):
        raise ValueError(
            f"compose: the permutations have different names ({sorted(set(first) ^ set(then))})"
        )
    return {p: jnp.take(first[p], then[p]) for p in first}


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_perms(spec: PermutationSpec, perms: Perms) -> None:
    """Raise ``ValueError`` unless ``perms`` has exactly the spec's names, each a 1-D integer
    array of the spec's length holding every index once (values checked when not traced)."""
    if not isinstance(perms, dict):
        raise ValueError(f"permutations must be a dict name -> int array, got {type(perms)}")
    missing = sorted(set(spec.sizes) - set(perms))
    extra = sorted(set(perms) - set(spec.sizes))
    if missing or extra:
        raise ValueError(
            f"permutations do not match the spec: missing {missing}, not in the spec {extra}"
        )
    for p, v in perms.items():
        n = spec.sizes[p]
        shape = tuple(jnp.shape(v))
        if shape != (n,):
            raise ValueError(f"permutation {p!r} must have shape ({n},), got {shape}")
        if not jnp.issubdtype(jnp.asarray(v).dtype, jnp.integer):
            raise ValueError(f"permutation {p!r} must hold integers, got {jnp.asarray(v).dtype}")
        if _is_concrete(v):
            values = np.sort(np.asarray(v))
            if not np.array_equal(values, np.arange(n)):
                bad = np.setdiff1d(np.arange(n), values)[:5]
                raise ValueError(
                    f"permutation {p!r} is not a permutation of 0..{n - 1} "
                    f"(e.g. missing {bad.tolist()})"
                )
