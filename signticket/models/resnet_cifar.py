"""CIFAR ResNets (He et al. 2016, Sec. 4.2) with projection ("option B") shortcuts.

The projection shortcut (1x1 conv + BN wherever the shape changes) is used instead of the
paper's zero-padding "option A" because it gives every block the same named parameters, which
the weight-permutation specs rely on; it adds ~3k parameters to ResNet-20.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from signticket.models.layers import batch_norm, conv, dense, global_avg_pool


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, two 3x3 convs.

    The shortcut is ``shortcut_bn(shortcut_conv(x))`` (1x1, strided) when ``strides != 1`` or
    the channel count changes, else the identity.
    """

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = conv(self.features, 3, strides=self.strides, name="conv1")(x)
        y = nn.relu(batch_norm(train, name="bn1")(y))
        y = conv(self.features, 3, name="conv2")(y)
        y = batch_norm(train, name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, 1, strides=self.strides, name="shortcut_conv")(x)
            x = batch_norm(train, name="shortcut_bn")(x)
        return nn.relu(y + x)


class CifarResNet(nn.Module):
    """``stem_conv`` (3x3, stride 1) -> ``stem_bn`` -> ReLU -> stages of BasicBlocks
    ``stage{s}_block{b}`` (stage 0 keeps the resolution, later stages halve it in their first
    block) -> global average pool -> ``head``.

    Attributes:
        stage_sizes: BasicBlocks per stage.
        widths: base channels per stage (the stem has ``widths[0]``).
        width: integer multiplier applied to every width (ResNet-20x``width``).
        num_classes: output logits.
    """

    stage_sizes: Sequence[int] = (3, 3, 3)
    widths: Sequence[int] = (16, 32, 64)
    width: int = 1
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(
                f"CifarResNet: {len(self.stage_sizes)} stage sizes but {len(self.widths)} widths"
            )
        x = conv(self.widths[0] * self.width, 3, name="stem_conv")(x)
        x = nn.relu(batch_norm(train, name="stem_bn")(x))
        for s, (blocks, base) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for b in range(blocks):
                strides = 2 if s > 0 and b == 0 else 1
                x = BasicBlock(base * self.width, strides, name=f"stage{s}_block{b}")(x, train)
        return dense(self.num_classes, name="head")(global_avg_pool(x))


def cifar_resnet(depth: int = 20, num_classes: int = 10, width: int = 1) -> CifarResNet:
    """The 3-stage CIFAR ResNet of the given ``depth`` (6n + 2: 20, 32, 44, 56, 110, ...)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    n = (depth - 2) // 6
    return CifarResNet(stage_sizes=(n, n, n), width=width, num_classes=num_classes)


def resnet20(num_classes: int = 10, width: int = 1) -> CifarResNet:
    """ResNet-20 (3 x 3 BasicBlocks, widths 16/32/64 times ``width``); ~0.27M params at width 1."""
    return cifar_resnet(20, num_classes=num_classes, width=width)


def resnet18(
    num_classes: int = 10, widths: Sequence[int] = (64, 128, 256, 512), width: int = 1
) -> CifarResNet:
    """CIFAR ResNet-18: 4 x 2 BasicBlocks, 3x3 stride-1 stem and no max-pool (~11.2M params)."""
    return CifarResNet(
        stage_sizes=(2, 2, 2, 2), widths=tuple(widths), width=width, num_classes=num_classes
    )
