"""PyTorch's default ``nn.Conv2d`` / ``nn.Linear`` initialization as Flax initializers.

PyTorch initializes a layer's weight with ``kaiming_uniform_(a=sqrt(5))``, i.e.
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and its bias with the same bound from the *weight's*
fan-in. Reference code that never calls an init function (sparse-rebasin's VGG11_nofc under its
shipped ``init_weights: False``, the Linear bias of its ResNet-20) relies on exactly this, and
sign and mask transfer keep init magnitudes, so models that port such code use these.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

#: ``kaiming_uniform_(a=sqrt(5))``: bound ``sqrt(6 / ((1 + 5) fan_in)) = 1 / sqrt(fan_in)``;
#: Flax's ``variance_scaling(1/3, fan_in, uniform)`` has bound ``sqrt(3 * (1/3) / fan_in)``.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` where ``fan_in`` is the layer weight's fan-in
    (a bias's own shape does not know it, so it is bound when the layer is built)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
