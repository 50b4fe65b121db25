"""MLP-Mixer (Tolstikhin et al. 2021) as the official AWS code builds it for ImageNet
(``models/mlp_mixer.py``, the lucidrains/mlp-mixer-pytorch layout;
``MLPMixer(image_size=224, channels=3, patch_size=16, dim=512, depth=12, num_classes=1000)``).

What the official file does, and so what this model does:

- Patches: ``Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')`` then ``nn.Linear(p*p*c,
  dim)`` (``patch_embed`` here). On NHWC input the same flattening order is a reshape.
- ``depth`` blocks of two pre-norm residual MLPs:
  token mixing ``x + Conv1d(4n -> n, k=1)(GELU(Conv1d(n -> 4n, k=1)(LayerNorm(x))))`` over the
  ``n`` patches (the patches are the ``Conv1d`` channels, ``expansion_factor = 4``), and channel
  mixing ``x + Linear(dim/2 -> dim)(GELU(Linear(dim -> dim/2)(LayerNorm(x))))``
  (``expansion_factor_token = 0.5``). Names: ``token_ln``, ``token_fc1``, ``token_fc2``,
  ``channel_ln``, ``channel_fc1``, ``channel_fc2``.
- ``final_ln`` -> mean over patches -> ``head``.
- GELU is exact (``nn.GELU()``: erf); LayerNorm eps 1e-5 with the two-pass variance (PyTorch's
  ``F.layer_norm``; AWS's ``new_ln_forward`` also uses the default eps); dropout 0 (the
  official call's default) is the identity.
- The ``Conv1d`` kernels keep PyTorch's 3-d shape as ``(1, in, out)`` (the HWIO analogue of
  ``(out, in, 1)``), computed as one matmul over the patch axis.
- Init: PyTorch's defaults (the file sets none): Linear and Conv1d kernels and biases
  U(+-1/sqrt(fan_in)), LayerNorm 1 / 0.

AWS prunes every ``Conv1d`` and every ``Linear`` but the classifier and interpolates the
LayerNorm affine parameters toward their init (``models/utils.py::new_ln_forward``); the
``*_ln`` names make :func:`signticket.tree.is_norm` select them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from signticket.errors import UserError
from signticket.models.layers import torch_dense
from signticket.models.torch_init import torch_bias_init, torch_kernel_init

LN_EPSILON = 1e-5  # torch.nn.LayerNorm / F.layer_norm default


class PatchConv1d(nn.Module):
    """``nn.Conv1d(n_in, features, kernel_size=1)`` on ``(batch, n_in, length)``: a matmul
    over axis 1. Kernel ``(1, n_in, features)``, PyTorch's default init."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = x.shape[1]
        kernel = self.param("kernel", torch_kernel_init, (1, n_in, self.features), jnp.float32)
        bias = self.param("bias", torch_bias_init(n_in), (self.features,), jnp.float32)
        kernel, bias = kernel.astype(x.dtype), bias.astype(x.dtype)
        return jnp.einsum("bnl,nf->bfl", x, kernel[0]) + bias[:, None]


def layer_norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPSILON, use_fast_variance=False, name=name)


def gelu(x: jax.Array) -> jax.Array:
    return nn.gelu(x, approximate=False)


class MixerBlock(nn.Module):
    """Token-mixing then channel-mixing pre-norm residual MLPs."""

    expansion_factor: float = 4.0
    expansion_factor_token: float = 0.5
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        n, dim = x.shape[1], x.shape[2]
        drop = nn.Dropout(self.dropout, deterministic=not (train and self.has_rng("dropout")))
        y = layer_norm("token_ln")(x)
        y = drop(gelu(PatchConv1d(int(n * self.expansion_factor), name="token_fc1")(y)))
        x = x + drop(PatchConv1d(n, name="token_fc2")(y))
        inner = int(dim * self.expansion_factor_token)
        y = layer_norm("channel_ln")(x)
        y = drop(gelu(torch_dense(inner, dim, name="channel_fc1")(y)))
        return x + drop(torch_dense(dim, inner, name="channel_fc2")(y))


class MLPMixer(nn.Module):
    """Patch embedding -> ``block{i}`` -> ``final_ln`` -> mean over patches -> ``head``.

    Attributes (the official ``MLPMixer`` keywords, defaults = the AWS ImageNet call):
        num_classes: output logits.
        image_size: input height = width (checked against the input).
        channels: input channels.
        patch_size: square patch side; must divide ``image_size``.
        dim: token embedding width.
        depth: mixer blocks.
        expansion_factor: token-mixing hidden width / number of patches.
        expansion_factor_token: channel-mixing hidden width / ``dim``.
        dropout: dropout after each hidden layer and MLP output (train mode with a
            ``"dropout"`` rng only).
    """

    num_classes: int = 1000
    image_size: int = 224
    channels: int = 3
    patch_size: int = 16
    dim: int = 512
    depth: int = 12
    expansion_factor: float = 4.0
    expansion_factor_token: float = 0.5
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise UserError(f"MLPMixer: image {h}x{w} is not divisible by patch size {p}")
        if (h, w, c) != (self.image_size, self.image_size, self.channels):
            raise UserError(f"MLPMixer built for {self.image_size}x{self.image_size}x"
                            f"{self.channels} images got {h}x{w}x{c}")
        # b (h p1) (w p2) c -> b (h w) (p1 p2 c): the official Rearrange's order.
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, (h // p) * (w // p), p * p * c)
        x = torch_dense(self.dim, p * p * c, name="patch_embed")(x)
        for i in range(self.depth):
            x = MixerBlock(self.expansion_factor, self.expansion_factor_token, self.dropout,
                           name=f"block{i}")(x, train)
        x = layer_norm("final_ln")(x)
        x = jnp.mean(x, axis=1)
        return torch_dense(self.num_classes, self.dim, name="head")(x)


def mlp_mixer(num_classes: int = 1000, image_size: int = 224, channels: int = 3,
              patch_size: int = 16, dim: int = 512, depth: int = 12,
              expansion_factor: float = 4.0, expansion_factor_token: float = 0.5,
              dropout: float = 0.0) -> MLPMixer:
    """The official ``MLPMixer(image_size=224, channels=3, patch_size=16, dim=512, depth=12,
    num_classes=1000)`` (7,786,968 params)."""
    return MLPMixer(num_classes=num_classes, image_size=image_size, channels=channels,
                    patch_size=patch_size, dim=dim, depth=depth,
                    expansion_factor=expansion_factor,
                    expansion_factor_token=expansion_factor_token, dropout=dropout)
