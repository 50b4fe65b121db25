"""CIFAR VGG (Simonyan & Zisserman 2015) as used in the lottery-ticket literature.

One linear classifier on top of the conv features (no 4096-wide FC stack), as in the CIFAR VGGs
of Frankle & Carbin and follow-ups. :func:`vgg11_nofc` is sparse-rebasin's ``VGG11_nofc``
(conv biases, no BN, PyTorch's default Conv2d / Linear init).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax

from signticket.errors import UserError
from signticket.models.layers import (
    batch_norm,
    conv,
    conv_general_dilated,
    dense,
    global_avg_pool,
    max_pool_2x2,
)
from signticket.models.torch_init import torch_bias_init, torch_kernel_init

# Conv output channels, "M" = 2x2 max-pool.
CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
    ),
}  # fmt: skip


class VGG(nn.Module):
    """Convs ``conv{i}`` (3x3; ``i`` counts convs only) each followed by ``bn{i}`` (when
    ``batch_norm``) and ReLU, 2x2 max-pools at ``"M"``, global average pool -> ``head``.

    Convs carry a bias only without BatchNorm (BN's shift makes it redundant). The global
    average pool equals the usual flatten on 32x32 inputs (1x1 after five pools) and lets the
    same model run on any input size.

    Attributes:
        cfg: conv widths and ``"M"`` pool markers.
        batch_norm: BatchNorm after every conv.
        num_classes: output logits.
        weight_init: ``"kaiming"`` (Kaiming-normal kernels, zero biases) or ``"torch"`` (PyTorch's
            default ``U(+-1/sqrt(fan_in))`` for kernels and biases, as an ``nn.Module`` that
            never calls an init function).
    """

    cfg: Sequence[int | str] = CFGS["vgg11"]
    batch_norm: bool = False
    num_classes: int = 10
    weight_init: Literal["kaiming", "torch"] = "kaiming"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        i = 0
        for item in self.cfg:
            if item == "M":
                x = max_pool_2x2(x)
                continue
            x = self._conv(int(item), x.shape[-1], f"conv{i}")(x)
            if self.batch_norm:
                x = batch_norm(train, name=f"bn{i}")(x)
            x = nn.relu(x)
            i += 1
        x = global_avg_pool(x)
        if self.weight_init == "kaiming":
            return dense(self.num_classes, name="head")(x)
        return nn.Dense(self.num_classes, kernel_init=torch_kernel_init,
                        bias_init=torch_bias_init(x.shape[-1]), name="head")(x)

    def _conv(self, features: int, in_features: int, name: str) -> nn.Module:
        if self.weight_init not in ("kaiming", "torch"):
            raise UserError(f"VGG weight_init must be 'kaiming' or 'torch': {self.weight_init!r}")
        if self.weight_init == "kaiming":
            return conv(features, 3, use_bias=not self.batch_norm, name=name)
        return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=not self.batch_norm,
                       kernel_init=torch_kernel_init, bias_init=torch_bias_init(9 * in_features),
                       conv_general_dilated=conv_general_dilated, name=name)


def vgg11(num_classes: int = 10, batch_norm: bool = False) -> VGG:
    """VGG-11 (8 convs, ~9.2M params)."""
    return VGG(cfg=CFGS["vgg11"], batch_norm=batch_norm, num_classes=num_classes)


def vgg11_nofc(num_classes: int = 10) -> VGG:
    """sparse-rebasin's ``VGG11_nofc`` (``models.py``): 8 biased 3x3 convs + ReLU, no BN, one
    Linear, PyTorch default init (its configs set ``init_weights: False``)."""
    return VGG(
        cfg=CFGS["vgg11"], batch_norm=False, num_classes=num_classes, weight_init="torch"
    )


def vgg16(num_classes: int = 10, batch_norm: bool = False) -> VGG:
    """VGG-16 (13 convs, ~14.7M params)."""
    return VGG(cfg=CFGS["vgg16"], batch_norm=batch_norm, num_classes=num_classes)
