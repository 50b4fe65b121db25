"""CIFAR ResNets (He et al. 2016, Sec. 4.2) with projection ("option B") shortcuts.

The projection shortcut (conv + BN wherever the shape changes) is used instead of the paper's
zero-padding "option A" because it gives every block the same named parameters, which the
weight-permutation specs rely on. Its kernel is 1x1 by default (~3k parameters on ResNet-20);
:func:`resnet20_rebasin` is the ResNet-20 of the sparse-rebasin code (from REPAIR), whose
shortcut is a 3x3 stride-2 conv (padding 1) and whose Linear bias keeps PyTorch's default init.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax

from signticket.errors import UserError
from signticket.models.layers import batch_norm, conv, dense, global_avg_pool, kernel_init
from signticket.models.torch_init import torch_bias_init


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, two 3x3 convs.

    The shortcut is ``shortcut_bn(shortcut_conv(x))`` (``shortcut_kernel`` square, strided,
    padding ``k // 2``) when ``strides != 1`` or the channel count changes, else the identity.
    """

    features: int
    strides: int = 1
    shortcut_kernel: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = conv(self.features, 3, strides=self.strides, name="conv1")(x)
        y = nn.relu(batch_norm(train, name="bn1")(y))
        y = conv(self.features, 3, name="conv2")(y)
        y = batch_norm(train, name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, self.shortcut_kernel, strides=self.strides,
                     name="shortcut_conv")(x)
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
        shortcut_kernel: kernel size of the projection shortcuts (1, or 3 as sparse-rebasin).
        head_bias_init: ``"zeros"``, or ``"torch"``: PyTorch's default Linear bias init
            ``U(+-1/sqrt(fan_in))`` (sparse-rebasin re-initializes only Linear/Conv *weights*).
    """

    stage_sizes: Sequence[int] = (3, 3, 3)
    widths: Sequence[int] = (16, 32, 64)
    width: int = 1
    num_classes: int = 10
    shortcut_kernel: int = 1
    head_bias_init: Literal["zeros", "torch"] = "zeros"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if len(self.stage_sizes) != len(self.widths):
            raise UserError(
                f"CifarResNet: {len(self.stage_sizes)} stage sizes but {len(self.widths)} widths"
            )
        x = conv(self.widths[0] * self.width, 3, name="stem_conv")(x)
        x = nn.relu(batch_norm(train, name="stem_bn")(x))
        for s, (blocks, base) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for b in range(blocks):
                strides = 2 if s > 0 and b == 0 else 1
                x = BasicBlock(base * self.width, strides, self.shortcut_kernel,
                               name=f"stage{s}_block{b}")(x, train)
        x = global_avg_pool(x)
        if self.head_bias_init == "zeros":
            return dense(self.num_classes, name="head")(x)
        if self.head_bias_init != "torch":
            raise UserError(f"head_bias_init must be 'zeros' or 'torch': {self.head_bias_init!r}")
        head = nn.Dense(self.num_classes, kernel_init=kernel_init,
                        bias_init=torch_bias_init(x.shape[-1]), name="head")
        return head(x)


def cifar_resnet(depth: int = 20, num_classes: int = 10, width: int = 1) -> CifarResNet:
    """The 3-stage CIFAR ResNet of the given ``depth`` (6n + 2: 20, 32, 44, 56, 110, ...)."""
    if depth < 8 or (depth - 2) % 6:
        raise UserError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    n = (depth - 2) // 6
    return CifarResNet(stage_sizes=(n, n, n), width=width, num_classes=num_classes)


def resnet20(num_classes: int = 10, width: int = 1) -> CifarResNet:
    """ResNet-20 (3 x 3 BasicBlocks, widths 16/32/64 times ``width``); ~0.27M params at width 1."""
    return cifar_resnet(20, num_classes=num_classes, width=width)


def resnet20_rebasin(num_classes: int = 10, width: int = 1) -> CifarResNet:
    """sparse-rebasin's ResNet-20 (``models.py`` ``ResNet(BasicBlock, [3, 3, 3], w=width)``):
    3x3 stride-2 projection shortcuts with BN, Kaiming-normal (fan-in, untruncated) conv and
    Linear weights, PyTorch-default Linear bias."""
    return CifarResNet(stage_sizes=(3, 3, 3), width=width, num_classes=num_classes,
                       shortcut_kernel=3, head_bias_init="torch")


def resnet18(
    num_classes: int = 10, widths: Sequence[int] = (64, 128, 256, 512), width: int = 1
) -> CifarResNet:
    """CIFAR ResNet-18: 4 x 2 BasicBlocks, 3x3 stride-1 stem and no max-pool (~11.2M params)."""
    return CifarResNet(
        stage_sizes=(2, 2, 2, 2), widths=tuple(widths), width=width, num_classes=num_classes
    )
