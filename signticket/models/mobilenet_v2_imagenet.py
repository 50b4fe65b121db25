"""MobileNetV2 (Sandler et al. 2018) as torchvision builds it, which the official AWS code uses
for ImageNet (``models/utils.py``: ``tv_models.mobilenetv2.mobilenet_v2(num_classes=1000,
dropout=0)``; torchvision ``models/mobilenetv2.py``).

Unlike the CIFAR variant (:mod:`signticket.models.mobilenet_v2`, AWS's own
``models/mobilenetv2.py``): the stem conv has stride 2 and so does the second stage; an
expansion-1 block has no expansion conv; a residual is added only at stride 1 with equal
channels (no projection shortcuts); activations are ReLU6; ``dropout=0`` makes the classifier's
dropout the identity; and the init is torchvision's ``MobileNetV2.__init__``: every conv
``kaiming_normal_(mode="fan_out")`` (N(0, 2 / (out * k * k)), depthwise included; convs have
no bias), BN 1 / 0, the ``classifier`` Linear N(0, 0.01) with zero bias.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from signticket.models.layers import batch_norm, conv, global_avg_pool
from signticket.models.mobilenet_v2 import make_divisible

# (expansion t, output channels c, blocks n, stride of the first block s): torchvision's
# ``inverted_residual_setting``.
IMAGENET_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_INIT = "kaiming_normal_fan_out"
HEAD_STD = 0.01


class TVInvertedResidual(nn.Module):
    """[``expand_conv``/``expand_bn`` 1x1 + ReLU6, when ``expansion != 1``] ->
    ``dw_conv``/``dw_bn`` (depthwise 3x3, strided) + ReLU6 -> ``project_conv``/``project_bn``
    (1x1, linear); the identity added at stride 1 when channels are kept."""

    features: int
    expansion: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_channels = x.shape[-1]
        hidden = in_channels * self.expansion  # torchvision: int(round(inp * t)), t integral
        y = x
        if self.expansion != 1:
            y = conv(hidden, 1, name="expand_conv", init=_INIT)(y)
            y = nn.relu6(batch_norm(train, name="expand_bn")(y))
        y = conv(hidden, 3, strides=self.strides, groups=hidden, name="dw_conv", init=_INIT)(y)
        y = nn.relu6(batch_norm(train, name="dw_bn")(y))
        y = conv(self.features, 1, name="project_conv", init=_INIT)(y)
        y = batch_norm(train, name="project_bn")(y)
        if self.strides == 1 and in_channels == self.features:
            return x + y
        return y


class MobileNetV2ImageNet(nn.Module):
    """``stem_conv`` (3x3, stride 2) -> ``stem_bn`` -> ReLU6 -> blocks ``block{i}`` ->
    ``last_conv`` (1x1) -> ``last_bn`` -> ReLU6 -> global mean -> ``head``.

    Attributes:
        num_classes: output logits.
        width_mult: torchvision's ``width_mult``: every width ``make_divisible(c * width_mult,
            8)``, the last conv ``make_divisible(1280 * max(1, width_mult), 8)``; 1.0 is the
            official model.
    """

    num_classes: int = 1000
    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(make_divisible(32 * self.width_mult), 3, strides=2, name="stem_conv",
                 init=_INIT)(x)
        x = nn.relu6(batch_norm(train, name="stem_bn")(x))
        i = 0
        for expansion, channels, blocks, stride in IMAGENET_CFG:
            features = make_divisible(channels * self.width_mult)
            for b in range(blocks):
                x = TVInvertedResidual(features, expansion, stride if b == 0 else 1,
                                       name=f"block{i}")(x, train)
                i += 1
        x = conv(make_divisible(1280 * max(1.0, self.width_mult)), 1, name="last_conv",
                 init=_INIT)(x)
        x = nn.relu6(batch_norm(train, name="last_bn")(x))
        x = global_avg_pool(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(HEAD_STD),
                        bias_init=nn.initializers.zeros, name="head")(x)


def mobilenet_v2_imagenet(num_classes: int = 1000, width_mult: float = 1.0
                          ) -> MobileNetV2ImageNet:
    """torchvision's ``mobilenet_v2(num_classes, dropout=0)`` (3,504,872 params with 1000
    classes)."""
    return MobileNetV2ImageNet(num_classes=num_classes, width_mult=width_mult)
