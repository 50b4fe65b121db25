"""The training loss, shared by the engine (:mod:`signticket.train`) and the core's barrier
curves (:mod:`signticket.lmc`); imports only jax and optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
