"""ResNet-50 (He et al. 2016) as torchvision builds it ("v1.5" stride placement), with the
ImageNet stem or the CIFAR stem of the official AWS code.

Init as torchvision's ``ResNet.__init__``: every conv ``kaiming_normal_(mode="fan_out",
nonlinearity="relu")``, BN weight 1 / bias 0 (``zero_init_residual=False``), the ``fc`` head
PyTorch's default ``nn.Linear`` init. The CIFAR stem is the official AWS ``models/utils.py``
replacement ``nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)`` (built after torchvision's
init loop, so it keeps PyTorch's default conv init) with the max-pool removed.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from signticket.errors import UserError
from signticket.models.layers import batch_norm, conv, global_avg_pool, torch_dense

STEMS = ("imagenet", "cifar")
_INIT = "kaiming_normal_fan_out"


class Bottleneck(nn.Module):
    """1x1 ``conv1`` -> 3x3 ``conv2`` (strided, as in torchvision) -> 1x1 ``conv3`` expanding to
    ``features * expansion``, each with its BN (``bn1..bn3``); ``shortcut_conv``/``shortcut_bn``
    projection where the shape changes, else identity; ReLU after the sum.
    """

    features: int
    strides: int = 1
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out = self.features * self.expansion
        y = conv(self.features, 1, name="conv1", init=_INIT)(x)
        y = nn.relu(batch_norm(train, name="bn1")(y))
        y = conv(self.features, 3, strides=self.strides, name="conv2", init=_INIT)(y)
        y = nn.relu(batch_norm(train, name="bn2")(y))
        y = conv(out, 1, name="conv3", init=_INIT)(y)
        y = batch_norm(train, name="bn3")(y)
        if self.strides != 1 or x.shape[-1] != out:
            x = conv(out, 1, strides=self.strides, name="shortcut_conv", init=_INIT)(x)
            x = batch_norm(train, name="shortcut_bn")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """Stem -> Bottleneck stages ``stage{s}_block{b}`` (stages after the first halve the
    resolution in their first block) -> global average pool -> ``head``.

    Attributes:
        stage_sizes: Bottleneck blocks per stage ((3, 4, 6, 3) = ResNet-50).
        widths: bottleneck (inner) widths per stage; outputs are ``expansion`` times wider.
        num_classes: output logits.
        stem: ``imagenet``: ``stem_conv`` 7x7/2 -> ``stem_bn`` -> ReLU -> 3x3/2 max-pool;
            ``cifar``: ``stem_conv`` 3x3/1 -> ``stem_bn`` -> ReLU (no pool).
        stem_width: the stem's channels (0: ``widths[0]``, torchvision's ResNet-50).
        expansion: block outputs per inner channel (4 in torchvision's ResNet-50).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    widths: Sequence[int] = (64, 128, 256, 512)
    num_classes: int = 1000
    stem: str = "imagenet"
    stem_width: int = 0
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if len(self.stage_sizes) != len(self.widths):
            raise UserError(
                f"ResNet: {len(self.stage_sizes)} stage sizes but {len(self.widths)} widths"
            )
        if self.stem not in STEMS:
            raise UserError(f"unknown stem {self.stem!r}; available: {', '.join(STEMS)}")
        stem_width = self.stem_width or self.widths[0]
        if self.stem == "imagenet":
            x = conv(stem_width, 7, strides=2, name="stem_conv", init=_INIT)(x)
            x = nn.relu(batch_norm(train, name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = conv(stem_width, 3, name="stem_conv", init="torch_default")(x)
            x = nn.relu(batch_norm(train, name="stem_bn")(x))
        for s, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for b in range(blocks):
                strides = 2 if s > 0 and b == 0 else 1
                x = Bottleneck(width, strides, self.expansion, name=f"stage{s}_block{b}")(x, train)
        x = global_avg_pool(x)
        return torch_dense(self.num_classes, x.shape[-1], name="head")(x)


def resnet50(num_classes: int = 1000, widths: Sequence[int] = (64, 128, 256, 512),
             stem: str = "imagenet") -> ResNet:
    """ResNet-50 (~25.6M params with 1000 classes); ``widths`` can be shrunk for tests."""
    return ResNet(stage_sizes=(3, 4, 6, 3), widths=tuple(widths), num_classes=num_classes,
                  stem=stem)


def resnet50_wide(num_classes: int = 1000, widths: Sequence[int] = (256, 512, 1024, 2048),
                  stem_width: int = 128) -> ResNet:
    """sparse-rebasin's ImageNet model (``resnet50_src/resnet_torchvision.py::resnet50_wide``,
    ~271M params): torchvision's ResNet-50 with ``inplanes`` and ``base_width`` doubled, i.e. a
    128-channel stem, inner widths 256..2048 (4x) and block outputs 512..4096 (2x, so the
    expansion is 2)."""
    return ResNet(stage_sizes=(3, 4, 6, 3), widths=tuple(widths), num_classes=num_classes,
                  stem="imagenet", stem_width=stem_width, expansion=2)


def resnet50_cifar(num_classes: int = 100, widths: Sequence[int] = (64, 128, 256, 512)
                   ) -> ResNet:
    """ResNet-50 with the official AWS CIFAR-100 / Tiny-ImageNet stem (3x3/1 conv, no pool)."""
    return resnet50(num_classes, widths, stem="cifar")
