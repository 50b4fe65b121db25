"""On-device input transform: uint8 NHWC -> normalized float32, with optional augmentation.

It runs inside the jitted train/eval step, so augmentation costs no host work and no extra
transfer: the batch arrives as uint8 (4x smaller than float32) and is cropped, flipped and
normalized on the accelerator, per example, from the step's rng.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """``preprocess(images, rng, train) -> float32 images``; hashable, pure ``jnp``.

    Attributes:
      mean, std: per-channel statistics on the [0, 1] scale (one value broadcasts).
      crop_padding: random crop with this much zero padding on each side (4 for CIFAR);
        0 disables cropping. Padding is with black pixels (0) before normalization, as in
        the usual CIFAR recipe.
      flip: random horizontal flip with probability 1/2.
      resized_crop_scale: ``(min, max)`` area fraction of torchvision's
        ``RandomResizedCrop(size, scale)`` (aspect ratio in [3/4, 4/3]): a random box resized
        back to the image's size (:func:`random_resized_crop`); ``None`` disables it. Not
        combined with ``crop_padding``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False
    resized_crop_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        # Accept lists/arrays but store tuples: the object must stay hashable so that jit can
        # treat it as static configuration.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} must be non-empty, same length")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.resized_crop_scale is not None:
            lo, hi = (float(x) for x in self.resized_crop_scale)
            object.__setattr__(self, "resized_crop_scale", (lo, hi))
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"resized_crop_scale must satisfy 0 < min <= max <= 1, got "
                                 f"{self.resized_crop_scale}")
            if self.crop_padding:
                raise ValueError("crop_padding and resized_crop_scale are two crops; use one")

    @property
    def augments(self) -> bool:
        """Whether training-time augmentation does anything."""
        return self.crop_padding > 0 or self.flip or self.resized_crop_scale is not None

    def __call__(self, images: jax.Array, rng: jax.Array | None, train: bool) -> jax.Array:
        """uint8 ``[B, H, W, C]`` -> float32 normalized ``[B, H, W, C]``.

        Augmentation only when ``train`` and ``rng`` is given: per-example crop offsets and
        flips drawn from ``rng`` (deterministic for a given ``rng``). Eval mode is a pure,
        deterministic normalization.
        """
        images = jnp.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"expected NHWC images, got shape {images.shape}")
        if train and rng is not None and self.augments:
            crop_rng, flip_rng = jax.random.split(rng)
            if self.crop_padding > 0:
                images = random_crop(images, crop_rng, self.crop_padding)
            if self.resized_crop_scale is not None:
                images = random_resized_crop(images, crop_rng, self.resized_crop_scale)
            if self.flip:
                images = random_flip(images, flip_rng)
        # (x / 255 - mean) / std as one multiply-add: half the time of the divisions on CPU.
        std = np.asarray(self.std, np.float64)
        scale = jnp.asarray(1.0 / (255.0 * std), jnp.float32)
        offset = jnp.asarray(-np.asarray(self.mean, np.float64) / std, jnp.float32)
        return images.astype(jnp.float32) * scale + offset


def random_crop(images: jax.Array, rng: jax.Array, padding: int) -> jax.Array:
    """Zero-pad each image by ``padding`` and crop it back to its size at a random offset.

    One offset per example (vmapped ``dynamic_slice`` over the padded batch), so the batch
    stays a single fused gather instead of a Python loop.
    """
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (b, 2), 0, 2 * padding + 1)

    def crop(img: jax.Array, off: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(images: jax.Array, rng: jax.Array) -> jax.Array:
    """Mirror each image horizontally with probability 1/2 (independently per example)."""
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


#: torchvision ``RandomResizedCrop``'s default aspect-ratio range and number of tries.
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
RESIZED_CROP_ATTEMPTS = 10


def resized_crop_boxes(rng: jax.Array, batch: int, height: int, width: int,
                       scale: tuple[float, float],
                       ratio: tuple[float, float] = RESIZED_CROP_RATIO) -> jax.Array:
    """``[batch, 4]`` int boxes ``(top, left, h, w)`` drawn as torchvision's
    ``RandomResizedCrop.get_params``: up to 10 tries of an area fraction uniform in ``scale``
    and a log-uniform aspect ratio in ``ratio`` (sides ``round(sqrt(area * r))``,
    ``round(sqrt(area / r))``); the first box that fits is placed uniformly; if none fits, the
    central crop with the ratio clamped into ``ratio`` (the whole image for a square one)."""
    k_area, k_ratio, k_top, k_left = jax.random.split(rng, 4)
    shape = (batch, RESIZED_CROP_ATTEMPTS)
    area = height * width * jax.random.uniform(k_area, shape, minval=scale[0], maxval=scale[1])
    log_r = jax.random.uniform(k_ratio, shape, minval=np.log(ratio[0]), maxval=np.log(ratio[1]))
    aspect = jnp.exp(log_r)
    # jnp.round rounds half to even, as Python's round in torchvision.
    w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits, axis=1)
    pick = jnp.arange(batch)
    # The fallback is static: it depends only on the image's shape.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = height, round(height * max(ratio))
    else:
        fw, fh = width, height
    found = fits.any(axis=1)
    h = jnp.where(found, h[pick, first], fh)
    w = jnp.where(found, w[pick, first], fw)
    top = jnp.where(found, jax.random.randint(k_top, (batch,), 0, height - h + 1),
                    (height - fh) // 2)
    left = jnp.where(found, jax.random.randint(k_left, (batch,), 0, width - w + 1),
                     (width - fw) // 2)
    return jnp.stack([top, left, h, w], axis=1)


def _interpolation_matrix(start: jax.Array, length: jax.Array, size: int, out: int
                          ) -> jax.Array:
    """``[B, out, size]`` bilinear weights sampling ``[start, start + length)`` of an axis at
    ``out`` pixel centres, as PIL's bilinear resize of the cropped image when it enlarges
    (which RandomResizedCrop always does here: the box is never larger than the output):
    source coordinate ``start + (o + 0.5) * length / out - 0.5`` clamped into the box."""
    start = start[:, None].astype(jnp.float32)
    last = start + length[:, None].astype(jnp.float32) - 1
    pos = start + (jnp.arange(out, dtype=jnp.float32) + 0.5) * length[:, None] / out - 0.5
    pos = jnp.clip(pos, start, last)
    lo = jnp.floor(pos)
    frac = pos - lo
    hi = jnp.minimum(lo + 1, last)
    lo_hot = jax.nn.one_hot(lo.astype(jnp.int32), size, dtype=jnp.float32)
    hi_hot = jax.nn.one_hot(hi.astype(jnp.int32), size, dtype=jnp.float32)
    return (1 - frac)[..., None] * lo_hot + frac[..., None] * hi_hot


def random_resized_crop(images: jax.Array, rng: jax.Array, scale: tuple[float, float]
                        ) -> jax.Array:
    """torchvision's ``RandomResizedCrop(H, scale)`` per example, output the input's size:
    a box from :func:`resized_crop_boxes`, resized bilinearly to ``H x W``. Returns float32
    pixel values (0-255, not rounded back to uint8 as PIL does between its two passes)."""
    b, h, w, _ = images.shape
    boxes = resized_crop_boxes(rng, b, h, w, scale)
    rows = _interpolation_matrix(boxes[:, 0], boxes[:, 2], h, h)
    cols = _interpolation_matrix(boxes[:, 1], boxes[:, 3], w, w)
    return jnp.einsum("byh,bhwc,bxw->byxc", rows, images.astype(jnp.float32), cols,
                      precision=jax.lax.Precision.HIGHEST)
