"""ShuffleNet (Zhang et al. 2018, g = 3), CIFAR variant of the official AWS code
(``models/shufflenet.py``, the weiaicunzai/pytorch-cifar100 layout), used there for CIFAR-100
and Tiny-ImageNet.

What the official file does, and so what this model does:

- Stem: 3x3 conv (stride 1, *with* bias: ``BasicConv2d`` passes no ``bias=False``) -> BN ->
  ReLU, 24 channels.
- Stages 2, 3, 4 with 4, 8, 4 units and 240, 480, 960 output channels (``groups=3``). A unit:
  grouped 1x1 ``bottleneck`` conv (g = 3, also in stage 2: the official ``stage == 2`` branch
  builds the same grouped conv, and is never taken anyway since ``_make_stage`` passes its list
  as ``stage``) to ``out / 4`` channels + BN + ReLU -> channel shuffle -> depthwise 3x3 conv
  (strided) + BN -> grouped 1x1 ``expand`` conv + BN -> fusion -> ReLU. Every conv has a bias.
- Fusion: where ``stride != 1 or in != out`` (each stage's first unit), the shortcut is a 3x3
  average pool with stride 2 and padding 1 (PyTorch's ``count_include_pad=True``: the padded
  zeros count) and the fusion concatenates ``[shortcut, branch]``, the branch expanding to
  ``out - in`` channels; elsewhere the identity is added.
- Global mean -> ``fc`` classifier (``head`` here).
- Init: PyTorch's defaults everywhere (the file sets none): conv and linear kernels and biases
  U(+-1/sqrt(fan_in)) with ``fan_in = in / groups * k * k``, BN 1 / 0.

Grouped and depthwise convs run on XLA (``layers.conv_general_dilated`` sends only ungrouped
convs to the native oneDNN path).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from signticket.errors import UserError
from signticket.models.layers import (
    batch_norm,
    conv,
    global_avg_pool,
    torch_default_bias,
    torch_dense,
)

GROUPS = 3
#: ``ShuffleNet(groups=3)``: stem width, then the output width of stages 2, 3, 4.
G3_CHANNELS: tuple[int, int, int, int] = (24, 240, 480, 960)
#: ``shufflenet(num_classes)``: units per stage.
UNITS: tuple[int, int, int] = (4, 8, 4)
_INIT = "torch_default"


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet's channel shuffle on NHWC: view channels as ``(groups, c / groups)``,
    transpose to ``(c / groups, groups)``, flatten (the official ``ChannelShuffle``, whose NCHW
    view/transpose acts on the channel axis alone). Output channel ``j * groups + g`` is input
    channel ``g * (c / groups) + j``."""
    n, h, w, c = x.shape
    if c % groups:
        raise UserError(f"channel_shuffle: {c} channels do not split into {groups} groups")
    return x.reshape(n, h, w, groups, c // groups).swapaxes(-1, -2).reshape(n, h, w, c)


def _conv(features: int, kernel_size: int, in_channels: int, *, name: str, strides: int = 1,
          groups: int = 1) -> nn.Conv:
    """An ``nn.Conv2d`` with its default bias and init (``bias=True``, U(+-1/sqrt(fan_in)))."""
    fan_in = in_channels // groups * kernel_size * kernel_size
    return conv(features, kernel_size, strides=strides, groups=groups, use_bias=True,
                init=_INIT, bias_init=torch_default_bias(fan_in), name=name)


class ShuffleUnit(nn.Module):
    """``bottleneck_conv``/``bottleneck_bn`` (grouped 1x1) -> ReLU -> channel shuffle ->
    ``dw_conv``/``dw_bn`` (depthwise 3x3, strided) -> ``expand_conv``/``expand_bn`` (grouped
    1x1) -> add the identity, or concatenate after a 3x3/2 average pool -> ReLU."""

    features: int
    strides: int = 1
    groups: int = GROUPS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_channels = x.shape[-1]
        bottleneck = self.features // 4
        concat = self.strides != 1 or in_channels != self.features
        y = _conv(bottleneck, 1, in_channels, groups=self.groups, name="bottleneck_conv")(x)
        y = nn.relu(batch_norm(train, name="bottleneck_bn")(y))
        y = channel_shuffle(y, self.groups)
        y = _conv(bottleneck, 3, bottleneck, strides=self.strides, groups=bottleneck,
                  name="dw_conv")(y)
        y = batch_norm(train, name="dw_bn")(y)
        expanded = self.features - in_channels if concat else self.features
        y = _conv(expanded, 1, bottleneck, groups=self.groups, name="expand_conv")(y)
        y = batch_norm(train, name="expand_bn")(y)
        if concat:
            # nn.AvgPool2d(3, stride=2, padding=1): Flax's avg_pool also counts the padding.
            shortcut = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                                   count_include_pad=True)
            return nn.relu(jnp.concatenate([shortcut, y], axis=-1))
        return nn.relu(x + y)


class ShuffleNet(nn.Module):
    """``stem_conv`` -> ``stem_bn`` -> ReLU -> units ``stage{s}_unit{u}`` (``s`` = 2, 3, 4 as
    in the paper and the official code; the first unit of each stage has stride 2) -> global
    mean -> ``head``.

    Attributes:
        num_classes: output logits.
        width_mult: channel multiplier; the official model is 1.0. The stem stays a multiple
            of the group count and stage widths a multiple of ``4 * groups`` (so the bottleneck
            splits into groups), rounded to the nearest.
    """

    num_classes: int = 100
    width_mult: float = 1.0
    units: tuple[int, ...] = UNITS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        stem, *stages = G3_CHANNELS
        x = _conv(_scaled(stem, self.width_mult, GROUPS), 3, x.shape[-1], name="stem_conv")(x)
        x = nn.relu(batch_norm(train, name="stem_bn")(x))
        for s, (units, channels) in enumerate(zip(self.units, stages, strict=True), start=2):
            features = _scaled(channels, self.width_mult, 4 * GROUPS)
            for u in range(units):
                x = ShuffleUnit(features, 2 if u == 0 else 1, name=f"stage{s}_unit{u}")(x, train)
        x = global_avg_pool(x)
        return torch_dense(self.num_classes, x.shape[-1], name="head")(x)


def _scaled(channels: int, width_mult: float, multiple: int) -> int:
    return max(multiple, round(channels * width_mult / multiple) * multiple)


def shufflenet(num_classes: int = 100, width_mult: float = 1.0) -> ShuffleNet:
    """The official ``shufflenet(num_classes)`` = ``ShuffleNet([4, 8, 4], num_classes,
    groups=3)`` (1,012,108 params with 100 classes)."""
    return ShuffleNet(num_classes=num_classes, width_mult=width_mult)
