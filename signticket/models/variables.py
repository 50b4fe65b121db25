"""Initializing a model's variables as plain dicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from signticket import cpu_tuning


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict[str, Any]:
    """``{'params': ..., 'batch_stats': ...}`` of ``model`` initialized on zeros of
    ``input_shape`` (NHWC, with a batch axis); ``batch_stats`` is ``{}`` for models without BN.

    Initialization runs in eval mode, so BN running statistics start at mean 0 / variance 1.
    It is jitted: run eagerly, every layer shape would compile its own kernels, which takes
    far longer than one compile of the whole init on deep models.
    """
    shape = tuple(input_shape)
    init = jax.jit(lambda k: model.init(k, jnp.zeros(shape, jnp.float32), train=False),
                   compiler_options=cpu_tuning.init_program_options() or None)
    variables = flax.core.unfreeze(init(key))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
