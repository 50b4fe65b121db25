"""Layer factories shared by every model family.

They pin down the choices that make our models PyTorch-equivalent (BatchNorm momentum and
epsilon, Kaiming-normal init, symmetric ``k // 2`` conv padding), so each architecture file
only has to describe its topology and the names of its submodules.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's kaiming_normal_ (fan_in, gain sqrt(2)) draws from an untruncated normal; Flax's
# he_normal truncates. Sign transfer keeps init magnitudes, so match the papers' code exactly.
kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def conv(
    features: int,
    kernel_size: int,
    *,
    name: str,
    strides: int = 1,
    use_bias: bool = False,
    groups: int = 1,
) -> nn.Conv:
    """A square HWIO convolution with PyTorch-style symmetric padding ``kernel_size // 2``.

    Symmetric padding (rather than Flax's ``"SAME"``, which pads ``(0, 1)`` for stride 2) keeps
    strided layers pixel-aligned with their PyTorch counterparts, so weights can be ported.
    """
    pad = kernel_size // 2
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        feature_group_count=groups,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        name=name,
    )


def dense(features: int, *, name: str, use_bias: bool = True) -> nn.Dense:
    """A Dense layer with Kaiming-normal kernel and zero bias."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        name=name,
    )


def batch_norm(train: bool, *, name: str) -> nn.BatchNorm:
    """BatchNorm equivalent to ``torch.nn.BatchNorm2d`` defaults (torch momentum 0.1 = 0.9 here).

    ``name`` must satisfy the normalization-name rule of :mod:`signticket.tree` (``bn*``,
    ``*_bn``, ...), which is how pruning and sign transfer tell norm parameters apart.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        scale_init=nn.initializers.ones,
        bias_init=nn.initializers.zeros,
        name=name,
    )


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes of an NHWC batch."""
    return jnp.mean(x, axis=(1, 2))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 / stride-2 max-pool; ``"SAME"`` rounds odd sizes up (PyTorch ``ceil_mode=True``).

    On even sizes this is exactly PyTorch's default pool; rounding up only matters for odd sizes,
    where it keeps deep stacks (VGG's five pools on 28x28) from shrinking to zero pixels.
    """
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
