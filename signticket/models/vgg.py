"""CIFAR VGG (Simonyan & Zisserman 2015) as used in the lottery-ticket literature.

One linear classifier on top of the conv features (no 4096-wide FC stack), as in the CIFAR VGGs
of Frankle & Carbin and follow-ups.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from signticket.models.layers import batch_norm, conv, dense, global_avg_pool, max_pool_2x2

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
    """

    cfg: Sequence[int | str] = CFGS["vgg11"]
    batch_norm: bool = False
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        i = 0
        for item in self.cfg:
            if item == "M":
                x = max_pool_2x2(x)
                continue
            x = conv(int(item), 3, use_bias=not self.batch_norm, name=f"conv{i}")(x)
            if self.batch_norm:
                x = batch_norm(train, name=f"bn{i}")(x)
            x = nn.relu(x)
            i += 1
        return dense(self.num_classes, name="head")(global_avg_pool(x))


def vgg11(num_classes: int = 10, batch_norm: bool = False) -> VGG:
    """VGG-11 (8 convs, ~9.2M params)."""
    return VGG(cfg=CFGS["vgg11"], batch_norm=batch_norm, num_classes=num_classes)


def vgg16(num_classes: int = 10, batch_norm: bool = False) -> VGG:
    """VGG-16 (13 convs, ~14.7M params)."""
    return VGG(cfg=CFGS["vgg16"], batch_norm=batch_norm, num_classes=num_classes)
