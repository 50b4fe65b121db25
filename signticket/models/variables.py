"""Initializing a model's variables as plain dicts."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from signticket import cpu_tuning


@functools.cache
def _init_program(options: tuple[tuple[str, Any], ...]) -> Callable:
    # One compile per model and input shape for the whole process (a lambda per call would
    # compile again every time; flax modules hash by their attributes).
    return jax.jit(lambda model, key, x: model.init(key, x, train=False), static_argnums=0,
                   compiler_options=dict(options) or None)


def init_program() -> Callable:
    """``(model, key, x) -> model.init(key, x, train=False)`` jitted (``model`` static) with
    the init's compiler options (:func:`signticket.cpu_tuning.init_program_options`: the same
    variables, a fraction of the compile)."""
    return _init_program(tuple(sorted(cpu_tuning.init_program_options().items())))


def apply_init(model: nn.Module, key: jax.Array, x: jax.Array) -> dict[str, Any]:
    """``model.init(key, x, train=False)`` through :func:`init_program`; inside another trace
    (``jax.eval_shape``, ``jax.jit``), where a nested program cannot carry compiler options,
    without them (the outer program is compiled with its own)."""
    try:
        return init_program()(model, key, x)
    except ValueError as e:
        if "compiler_options" not in str(e):
            raise
        return _init_program(())(model, key, x)


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict[str, Any]:
    """``{'params': ..., 'batch_stats': ...}`` of ``model`` initialized on zeros of
    ``input_shape`` (NHWC, with a batch axis); ``batch_stats`` is ``{}`` for models without BN.

    Initialization runs in eval mode, so BN running statistics start at mean 0 / variance 1.
    It is jitted (:func:`apply_init`): run eagerly, every layer shape would compile its own
    kernels, which takes far longer than one compile of the whole init on deep models.
    """
    variables = flax.core.unfreeze(apply_init(model, key, jnp.zeros(tuple(input_shape),
                                                                    jnp.float32)))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
