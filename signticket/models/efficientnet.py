"""EfficientNet-B0 (Tan & Le 2019), CIFAR variant of the official AWS code
(``models/efficientnet.py``, the kuangliu/pytorch-cifar layout), used there for CIFAR-100 and
Tiny-ImageNet.

What the official file does, and so what this model does:

- Stem: 3x3 conv, stride 1 (not ImageNet's 2), no bias -> BN -> swish (``x * sigmoid(x)``).
- 16 blocks over seven stages (``EfficientNetB0``'s cfg). A block is: 1x1 expansion conv + BN +
  swish (skipped in the forward pass when the expansion is 1, but *built* all the same:
  the official ``Block.__init__`` always creates ``conv1``/``bn1``, so block 0 carries an
  unused 32->32 conv that is counted, pruned and weight-decayed like any other), a depthwise
  3x3 or 5x5 conv (padding 1 / 2) + BN + swish, squeeze-excitation (global mean -> 1x1 conv
  with bias to ``int(in_channels * 0.25)`` channels of the block's *input* -> swish -> 1x1 conv
  with bias -> sigmoid -> channel scale), a 1x1 projection conv + BN (no activation), and the
  identity added when stride is 1 and the channel count is kept.
- Drop-connect never happens: ``_make_layers`` computes ``drop_rate = drop_connect_rate * b /
  blocks`` with a ``b`` that is never incremented, so every block's rate is 0.
- Global mean -> dropout (p = 0.2, train mode only) -> ``linear`` classifier (``head`` here).
  Dropout needs a ``"dropout"`` rng: the training engine passes one; a train-mode call without
  one (BN statistics passes, RiGL's fixed-batch gradient) runs without dropout, which cannot
  change BN statistics since dropout follows the last BN.
- Init: PyTorch's defaults everywhere (the file sets none): conv and linear kernels
  U(+-1/sqrt(fan_in)), the SE convs' and the classifier's biases the same, BN 1 / 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from signticket.models.layers import (
    batch_norm,
    conv,
    global_avg_pool,
    torch_default_bias,
    torch_dense,
)
from signticket.models.mobilenet_v2 import make_divisible

# (expansion, output channels, blocks, kernel size, stride of the first block) per stage.
B0_CFG: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 16, 1, 3, 1),
    (6, 24, 2, 3, 2),
    (6, 40, 2, 5, 2),
    (6, 80, 3, 3, 2),
    (6, 112, 3, 5, 1),
    (6, 192, 4, 5, 2),
    (6, 320, 1, 3, 1),
)
STEM_CHANNELS = 32
SE_RATIO = 0.25
DROPOUT_RATE = 0.2
_INIT = "torch_default"


def scaled_channels(channels: int, width_mult: float) -> int:
    """``channels`` at width ``width_mult``: exact at 1.0 (every B0 width is a multiple of 8),
    else rounded to a multiple of 8 (the usual EfficientNet/MobileNet rule)."""
    return channels if width_mult == 1.0 else make_divisible(channels * width_mult)


class SqueezeExcitation(nn.Module):
    """Global mean -> ``se_reduce`` (1x1, bias) -> swish -> ``se_expand`` (1x1, bias) ->
    sigmoid -> scale the input's channels. Convs (not dense layers) as in the official ``SE``,
    so kernels keep its 4-d shape."""

    se_channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = conv(self.se_channels, 1, use_bias=True, name="se_reduce", init=_INIT,
                 bias_init=torch_default_bias(channels))(s)
        s = nn.silu(s)
        s = conv(channels, 1, use_bias=True, name="se_expand", init=_INIT,
                 bias_init=torch_default_bias(self.se_channels))(s)
        return x * nn.sigmoid(s)


class MBConvBlock(nn.Module):
    """``expand_conv``/``expand_bn`` (1x1) -> ``dw_conv``/``dw_bn`` (depthwise, strided) ->
    squeeze-excitation (``se_reduce``, ``se_expand``) -> ``project_conv``/``project_bn`` (1x1),
    plus the identity at stride 1 when channels are kept. With ``expansion == 1`` the expansion
    conv and BN exist (created at init, as the official block creates them) but are not used.
    """

    features: int
    expansion: int
    kernel_size: int
    strides: int
    se_channels: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_channels = x.shape[-1]
        hidden = self.expansion * in_channels
        expand_conv = conv(hidden, 1, name="expand_conv", init=_INIT)
        expand_bn = batch_norm(train, name="expand_bn")
        if self.expansion != 1:
            y = nn.silu(expand_bn(expand_conv(x)))
        else:
            if self.is_initializing():  # unused, but part of the official parameter set
                expand_bn(expand_conv(x))
            y = x
        y = conv(hidden, self.kernel_size, strides=self.strides, groups=hidden, name="dw_conv",
                 init=_INIT)(y)
        y = nn.silu(batch_norm(train, name="dw_bn")(y))
        y = SqueezeExcitation(self.se_channels, name="se")(y)
        y = conv(self.features, 1, name="project_conv", init=_INIT)(y)
        y = batch_norm(train, name="project_bn")(y)
        if self.strides == 1 and in_channels == self.features:
            y = y + x
        return y


class EfficientNet(nn.Module):
    """``stem_conv`` (3x3, stride 1) -> ``stem_bn`` -> swish -> blocks ``block{i}`` (``i``
    counts blocks over all stages) -> global mean -> dropout (train) -> ``head``.

    Attributes:
        num_classes: output logits.
        width_mult: channel multiplier (:func:`scaled_channels`); the official model is 1.0.
        dropout_rate: dropout before the classifier in train mode (official: 0.2).
    """

    num_classes: int = 100
    width_mult: float = 1.0
    dropout_rate: float = DROPOUT_RATE

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(scaled_channels(STEM_CHANNELS, self.width_mult), 3, name="stem_conv",
                 init=_INIT)(x)
        x = nn.silu(batch_norm(train, name="stem_bn")(x))
        i = 0
        for expansion, channels, blocks, kernel_size, stride in B0_CFG:
            features = scaled_channels(channels, self.width_mult)
            for b in range(blocks):
                se_channels = int(x.shape[-1] * SE_RATIO)
                x = MBConvBlock(features, expansion, kernel_size, stride if b == 0 else 1,
                                se_channels, name=f"block{i}")(x, train)
                i += 1
        x = global_avg_pool(x)
        deterministic = not (train and self.has_rng("dropout"))
        x = nn.Dropout(self.dropout_rate, deterministic=deterministic, name="head_dropout")(x)
        return torch_dense(self.num_classes, x.shape[-1], name="head")(x)


def efficientnet_b0(num_classes: int = 100, width_mult: float = 1.0) -> EfficientNet:
    """The official ``EfficientNetB0(num_classes)`` (3,628,576 params with 100 classes)."""
    return EfficientNet(num_classes=num_classes, width_mult=width_mult)
