"""Fully connected network."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from signticket.models.layers import batch_norm, dense


class MLP(nn.Module):
    """Flatten -> [``fc{i}`` -> (``bn{i}``) -> ReLU] per hidden width -> ``head``.

    Attributes:
        widths: hidden layer widths.
        num_classes: output logits.
        batch_norm: add a BatchNorm ``bn{i}`` after each hidden Dense.
    """

    widths: Sequence[int] = (128, 128, 128)
    num_classes: int = 10
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.widths):
            x = dense(width, name=f"fc{i}")(x)
            if self.batch_norm:
                x = batch_norm(train, name=f"bn{i}")(x)
            x = nn.relu(x)
        return dense(self.num_classes, name="head")(x)
