"""Small BatchNorm convnet for 28x28 grayscale images (MNIST, Fashion-MNIST)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from signticket.models.layers import batch_norm, conv, dense, global_avg_pool, max_pool_2x2


class ConvNet(nn.Module):
    """Per stage ``conv{i}`` (3x3) -> ``bn{i}`` -> ReLU -> 2x2 max-pool (not after the last)
    -> global average pool -> ``head``.

    Attributes:
        channels: output channels of each conv stage.
        num_classes: output logits.
    """

    channels: Sequence[int] = (16, 32, 64)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        last = len(self.channels) - 1
        for i, ch in enumerate(self.channels):
            x = conv(ch, 3, name=f"conv{i}")(x)
            x = batch_norm(train, name=f"bn{i}")(x)
            # Pool before the ReLU: the same function and gradient (ReLU is monotone, so it
            # commutes with max), with the ReLU and its gradient on a 4x smaller tensor.
            if i != last:
                x = max_pool_2x2(x)
            x = nn.relu(x)
        return dense(self.num_classes, name="head")(global_avg_pool(x))
