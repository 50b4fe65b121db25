"""MobileNetV2 (Sandler et al. 2018), CIFAR variant of the official AWS code
(``models/mobilenetv2.py``, the kuangliu/pytorch-cifar layout).

Stem conv and the second stage keep stride 1 so a 32x32 input ends at 4x4. Every block has an
expansion conv (also the expansion-1 first block). Every stride-1 block adds a residual: the
identity where the channel count is kept, else a 1x1 conv + BN projection (``shortcut_conv``,
``shortcut_bn``); stride-2 blocks have none. Activations are ReLU (not ReLU6). Init is PyTorch's
default everywhere (the official model sets none): conv kernels U(+-1/sqrt(fan_in)), BN 1/0, the
``linear`` head kernel and bias U(+-1/sqrt(fan_in)).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from signticket.models.layers import batch_norm, conv, global_avg_pool, torch_dense

# (expansion, output channels, blocks, stride of the first block) per stage.
CIFAR_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_INIT = "torch_default"


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor`` without going below 90% of it (the rule of
    the reference implementation, so width multipliers give the published channel counts)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """1x1 ``expand_conv`` -> 3x3 depthwise ``dw_conv`` (strided) -> 1x1 linear ``project_conv``,
    each with its BN (``expand_bn``, ``dw_bn``, ``project_bn``; ReLU after the first two); at
    stride 1 a residual: identity, or ``shortcut_conv`` + ``shortcut_bn`` when channels change.
    """

    features: int
    expansion: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = x.shape[-1] * self.expansion
        y = conv(hidden, 1, name="expand_conv", init=_INIT)(x)
        y = nn.relu(batch_norm(train, name="expand_bn")(y))
        y = conv(hidden, 3, strides=self.strides, groups=hidden, name="dw_conv", init=_INIT)(y)
        y = nn.relu(batch_norm(train, name="dw_bn")(y))
        y = conv(self.features, 1, name="project_conv", init=_INIT)(y)
        y = batch_norm(train, name="project_bn")(y)
        if self.strides != 1:
            return y
        if x.shape[-1] != self.features:
            x = conv(self.features, 1, name="shortcut_conv", init=_INIT)(x)
            x = batch_norm(train, name="shortcut_bn")(x)
        return y + x


class MobileNetV2(nn.Module):
    """``stem_conv`` (3x3, stride 1) -> ``stem_bn`` -> ReLU -> inverted residual blocks
    ``block{i}`` (``i`` counts blocks over all stages) -> 1x1 ``last_conv`` -> ``last_bn`` ->
    ReLU -> global average pool -> ``head``.

    Attributes:
        width_mult: channel multiplier (the last conv never goes below 1280 channels); the
            official model has none (1.0).
        num_classes: output logits.
    """

    width_mult: float = 1.0
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(make_divisible(32 * self.width_mult), 3, name="stem_conv", init=_INIT)(x)
        x = nn.relu(batch_norm(train, name="stem_bn")(x))
        i = 0
        for expansion, channels, blocks, stride in CIFAR_CFG:
            features = make_divisible(channels * self.width_mult)
            for b in range(blocks):
                strides = stride if b == 0 else 1
                x = InvertedResidual(features, expansion, strides, name=f"block{i}")(x, train)
                i += 1
        x = conv(make_divisible(1280 * max(1.0, self.width_mult)), 1, name="last_conv",
                 init=_INIT)(x)
        x = nn.relu(batch_norm(train, name="last_bn")(x))
        x = global_avg_pool(x)
        return torch_dense(self.num_classes, x.shape[-1], name="head")(x)
