"""Layer factories shared by every model family.

They pin down the choices that make our models PyTorch-equivalent (BatchNorm momentum and
epsilon, Kaiming-normal init, symmetric ``k // 2`` conv padding), so each architecture file
only has to describe its topology and the names of its submodules.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from signticket import _xla_flags
from signticket.native import conv as native_conv

# PyTorch's kaiming_normal_ (fan_in, gain sqrt(2)) draws from an untruncated normal; Flax's
# he_normal truncates. Sign transfer keeps init magnitudes, so match the papers' code exactly.
kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# The inits of the reference code, by name. Sign transfer keeps |new init|, so the init scale is
# part of the method: each model states which of these every layer uses.
#  - torchvision ResNet (resnet.py ``ResNet.__init__``): every nn.Conv2d
#    ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``: N(0, 2 / (out * k * k)).
#  - PyTorch's default ``nn.Conv2d`` / ``nn.Linear.reset_parameters``:
#    ``kaiming_uniform_(a=sqrt(5))`` = U(+-sqrt(6 / ((1 + 5) fan_in))) = U(+-1 / sqrt(fan_in)),
#    fan_in = in / groups * k * k (HWIO kernels here: Flax's fan_in is the same product).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
KERNEL_INITS = {
    "kaiming_normal_fan_in": kernel_init,
    "kaiming_normal_fan_out": kaiming_normal_fan_out,
    "torch_default": torch_default_kernel,
}


def torch_default_bias(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default conv/linear bias: U(+-1 / sqrt(fan_in)) (fan_in of the weight)."""
    bound = 1.0 / float(fan_in) ** 0.5 if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# XLA's CPU convolution is pathological on tiny outputs: a 3x3 512->512 conv on a 128x2x2 batch
# runs at ~1.4 GFLOP/s (3.4 s fwd+bwd) where the same layer on 4x4 runs at ~120 GFLOP/s. Below
# this many output pixels, ``conv_general_dilated`` computes the conv as one im2col matmul
# instead (77 ms for that layer; tests/test_models.py checks it equals
# ``lax.conv_general_dilated``). So does a differentiated single-channel input (grayscale
# images) without oneDNN: with one input channel XLA's conv has nothing to vectorize over, and
# the matmul halves the convnet's first layer on Fashion-MNIST (forward + kernel gradient 4.0 ->
# 2.3 ms, batch 128; :func:`one_input_channel_conv`). Everything else keeps XLA's conv, which
# beats im2col there (2-3x on ResNet-20).
IM2COL_MAX_OUTPUT_PIXELS = 4

# A conv on an image of a few pixels is a small dense linear map, and one matmul computes it
# with only the products that touch real pixels: on VGG's last stage (3x3, 2x2 images) every
# output pixel sees 4 of its 9 taps, the rest is padding, which oneDNN's and XLA's convs
# (and im2col) multiply anyway. Up to this many input pixels (and no more than the kernel has
# taps, so the map never costs more products than the conv), ``conv_general_dilated`` builds
# the map from the kernel's taps and multiplies; its gradients are two more matmuls and a sum
# of the map's blocks per tap (plain ops: reverse and forward mode, vmap and sharding as usual).
DENSE_MAP_MAX_INPUT_PIXELS = 4


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.conv_general_dilated``, routed for NHWC/HWIO convs on the CPU backend: images of at
    most :data:`DENSE_MAP_MAX_INPUT_PIXELS` pixels by their dense linear map
    (:func:`dense_map_conv`); stride-1 float32 convs of one input channel by
    :func:`one_input_channel_conv`; other ungrouped convs by oneDNN where it is enabled and
    supports them; depthwise convs as shifted slices (:func:`depthwise_conv`); and otherwise, for
    stride-1 convs with at most :data:`IM2COL_MAX_OUTPUT_PIXELS` output pixels or one input
    channel, one im2col matmul: ``y[n, p, o] = sum_{i, j, c} pad(x)[n, p + (i, j), c] *
    w[i, j, c, o]``. Everything else is XLA's conv."""
    kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                  dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                  batch_group_count=batch_group_count, precision=precision,
                  preferred_element_type=preferred_element_type)
    nhwc = (lhs.ndim == 4 and dimension_numbers is not None
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")))
    undilated = all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1)))
    if not (nhwc and undilated and batch_group_count == 1):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    strides = tuple(window_strides)
    pads = tuple(map(tuple, lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
                     if isinstance(padding, str) else padding))
    kh, kw, cin, cout = rhs.shape
    h, w = lhs.shape[1:3]
    ho, wo = _conv_output_hw((h, w), (kh, kw), strides, pads)
    on_cpu = jax.default_backend() == "cpu"
    native_dtype = preferred_element_type in (None, lhs.dtype)
    if feature_group_count == 1:
        if on_cpu and takes_dense_map((h, w), (kh, kw)) and ho >= 1 and wo >= 1:
            return dense_map_conv(lhs, rhs, strides, pads, precision=precision,
                                  preferred_element_type=preferred_element_type)
        if (on_cpu and cin == 1 and strides == (1, 1) and lhs.dtype == rhs.dtype == jnp.float32
                and preferred_element_type in (None, jnp.float32)):
            return one_input_channel_conv(lhs, rhs, pads, precision)
        if native_dtype and native_conv.enabled() and native_conv.supports(lhs, rhs, pads):
            return native_conv.conv(lhs, rhs, strides, pads)
    elif (on_cpu and native_dtype and feature_group_count == lhs.shape[-1] == cout
          and cin == 1):
        return depthwise_conv(lhs, rhs, strides, pads)
    if (not on_cpu or feature_group_count != 1 or any(s != 1 for s in strides)
            or (ho * wo > IM2COL_MAX_OUTPUT_PIXELS and cin > 1)):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    return im2col_conv(lhs, rhs, pads, precision, preferred_element_type)


def im2col_conv(x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]],
                precision=None, preferred_element_type=None) -> jax.Array:
    """Stride-1 NHWC conv with HWIO kernel as one matmul of the input's patches:
    ``y[n, p, o] = sum_{i, j, c} pad(x)[n, p + (i, j), c] * w[i, j, c, o]``."""
    (top, bottom), (left, right) = pads
    n, h, wd, cin = x.shape
    kh, kw, _, cout = w.shape
    ho, wo = _conv_output_hw((h, wd), (kh, kw), (1, 1), pads)
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    cols = jnp.concatenate(
        [xp[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
    out = jnp.dot(cols.reshape(n * ho * wo, kh * kw * cin), w.reshape(kh * kw * cin, cout),
                  precision=precision, preferred_element_type=preferred_element_type)
    return out.reshape(n, ho, wo, cout)


# A conv of a single-channel image (Fashion-MNIST's first layer) is k*k shifted copies of the
# image times a row of weights each. Left undifferentiated (evaluation, BN re-estimation,
# activations for matching), that sum is one XLA loop that XLA fuses with what follows (the
# BatchNorm, pooling and ReLU), so the full-resolution output never goes through memory: the
# convnet's evaluation forward runs 1.2x faster than with oneDNN's conv (docs/performance.md).
# Differentiated it is not faster (the taps forward with oneDNN's kernel gradient: 0.96-0.99x
# on the convnet's step; autodiff through the taps: 0.71x), so under autodiff the conv runs as
# before (oneDNN where enabled, else im2col) and the training step's ops, and numbers, do not
# change. float32 only: the taps sum in the input's dtype.
@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def one_input_channel_conv(x: jax.Array, w: jax.Array,
                           pads: tuple[tuple[int, int], tuple[int, int]],
                           precision=None) -> jax.Array:
    """Stride-1 NHWC conv of a one-channel ``x`` with an HWIO kernel ``(kh, kw, 1, O)``:
    undifferentiated, the fused sum of shifted slices (:func:`depthwise_conv`, whose taps
    broadcast the one channel to ``O``); under autodiff, :func:`differentiated_conv`."""
    return depthwise_conv(x, w, (1, 1), pads)


def differentiated_conv(x: jax.Array, w: jax.Array,
                        pads: tuple[tuple[int, int], tuple[int, int]],
                        precision=None) -> jax.Array:
    """The stride-1 conv :func:`one_input_channel_conv` runs under autodiff: oneDNN's where
    it is enabled and supports it, else :func:`im2col_conv`."""
    if native_conv.enabled() and native_conv.supports(x, w, pads):
        return native_conv.conv(x, w, (1, 1), pads)
    return im2col_conv(x, w, pads, precision)


def _one_input_channel_conv_jvp(pads, precision, primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    y = differentiated_conv(x, w, pads, precision)
    # Bilinear: d(x * w) = dx * w + x * dw. A zero tangent (the data's) adds no conv.
    terms = [differentiated_conv(a, b, pads, precision)
             for a, b, zero in ((dx, w, type(dx) is SymbolicZero),
                                (x, dw, type(dw) is SymbolicZero)) if not zero]
    return y, functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(y)


one_input_channel_conv.defjvp(_one_input_channel_conv_jvp, symbolic_zeros=True)


def takes_dense_map(image_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> bool:
    """Whether an ungrouped CPU conv of this image and kernel size runs as its dense linear map
    (:data:`DENSE_MAP_MAX_INPUT_PIXELS`)."""
    pixels = image_hw[0] * image_hw[1]
    return pixels <= min(DENSE_MAP_MAX_INPUT_PIXELS, kernel_hw[0] * kernel_hw[1])


def _conv_output_hw(in_hw, kernel_hw, strides, pads) -> tuple[int, int]:
    return tuple((size + lo + hi - k) // s + 1
                 for size, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides, pads, strict=True))


def dense_map_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
                   pads: tuple[tuple[int, int], tuple[int, int]], precision=None,
                   preferred_element_type=None) -> jax.Array:
    """NHWC conv with HWIO kernel as one matmul by the conv's dense linear map:
    ``y[n, q, o] = sum_{p, c} x[n, p, c] * M[(p, c), (q, o)]`` over input pixels ``p`` and
    output pixels ``q``, where block ``(p, q)`` of ``M`` is the kernel tap linking them (zero
    where none does). ``M`` has ``(H * W * C) x (OH * OW * O)`` entries: for tiny images only."""
    (top, _), (left, _) = pads
    n, h, wd, cin = x.shape
    kh, kw, _, cout = w.shape
    oh, ow = _conv_output_hw((h, wd), (kh, kw), strides, pads)
    # Split (not indexed) taps: the kernel gradient is then one concatenate of per-tap sums.
    taps = [t.reshape(cin, cout) for t in jnp.split(w.reshape(kh * kw, cin, cout), kh * kw)]
    zero = jnp.zeros((cin, cout), w.dtype)

    def tap(i: int, j: int) -> jax.Array:
        return taps[i * kw + j] if 0 <= i < kh and 0 <= j < kw else zero

    rows = [jnp.concatenate([tap(ih - qh * strides[0] + top, iw - qw * strides[1] + left)
                             for qh in range(oh) for qw in range(ow)], axis=1)
            for ih in range(h) for iw in range(wd)]
    dense_map = jnp.concatenate(rows, axis=0)
    y = jnp.dot(x.reshape(n, h * wd * cin), dense_map, precision=precision,
                preferred_element_type=preferred_element_type)
    return y.reshape(n, oh, ow, cout)


# XLA's CPU depthwise convolution (feature_group_count = channels) runs its forward and both
# gradients 7-17x slower than the same sum written as k*k shifted, strided slices times the
# per-channel weights (fwd + bwd, 3x3, batch 16-128, 8-96 channels; MobileNetV2's and
# EfficientNet's steps were dominated by it). The slices are plain XLA ops, so autodiff, vmap
# and sharding need nothing special; tests/test_models.py checks values and gradients against
# ``lax.conv_general_dilated``.
def depthwise_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
                   pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Depthwise NHWC conv with HWIO kernel ``(kh, kw, 1, C)``: ``y[n, p, c] = sum_{i, j}
    pad(x)[n, s * p + (i, j), c] * w[i, j, 0, c]``."""
    (top, bottom), (left, right) = pads
    kh, kw = w.shape[:2]
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(xp, (0, i, j, 0),
                               (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1,
                                xp.shape[3]), (1, sh, sw, 1))
            term = window * w[i, j, 0]
            out = term if out is None else out + term
    return out


def conv(
    features: int,
    kernel_size: int,
    *,
    name: str,
    strides: int = 1,
    use_bias: bool = False,
    groups: int = 1,
    init: str = "kaiming_normal_fan_in",
    bias_init: nn.initializers.Initializer = nn.initializers.zeros,
) -> nn.Conv:
    """A square HWIO convolution with PyTorch-style symmetric padding ``kernel_size // 2``.

    Symmetric padding (rather than Flax's ``"SAME"``, which pads ``(0, 1)`` for stride 2) keeps
    strided layers pixel-aligned with their PyTorch counterparts, so weights can be ported.
    ``init`` names the kernel init (:data:`KERNEL_INITS`); biases (``use_bias``) start at zero
    unless ``bias_init`` says otherwise (PyTorch's default conv bias:
    ``torch_default_bias(in / groups * k * k)``). Grouped convs run on XLA, depthwise ones
    (``groups == features == in channels``) as :func:`depthwise_conv` on the CPU backend:
    :func:`conv_general_dilated` routes only ungrouped convs to the native and im2col paths.
    """
    pad = kernel_size // 2
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        feature_group_count=groups,
        kernel_init=KERNEL_INITS[init],
        bias_init=bias_init,
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


def torch_dense(features: int, fan_in: int, *, name: str) -> nn.Dense:
    """A Dense layer initialized as PyTorch's default ``nn.Linear(fan_in, features)``: kernel
    and bias U(+-1 / sqrt(fan_in)) (torchvision's ResNet ``fc`` and the AWS CIFAR models'
    classifiers rely on this default)."""
    return nn.Dense(
        features,
        kernel_init=torch_default_kernel,
        bias_init=torch_default_bias(fan_in),
        name=name,
    )


def dense(features: int, *, name: str, use_bias: bool = True) -> nn.Dense:
    """A Dense layer with Kaiming-normal kernel and zero bias."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        name=name,
    )


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` over the last axis, applied as one multiply-add per element.

    Same variables (``params``: ``scale``, ``bias``; ``batch_stats``: ``mean``, ``var``), the
    same float32 statistics (``var = max(0, E[x^2] - E[x]^2)``) and running averages
    (``r <- momentum * r + (1 - momentum) * batch``, skipped at init). Only the normalization
    differs in rounding: ``y = x * a + b`` with ``a = scale / sqrt(var + eps)`` and
    ``b = bias - mean * a`` (PyTorch's CPU kernel does the same), one pass over ``x`` where
    ``(x - mean) * a + bias`` is three on XLA:CPU.
    """

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        axes = tuple(range(x.ndim - 1))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mean = x32.mean(axes)
            var = jnp.maximum(0.0, jnp.square(x32).mean(axes) - jnp.square(mean))
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        a = scale * lax.rsqrt(var + self.epsilon)
        b = bias - mean * a
        return (x * a + b).astype(x.dtype)


def batch_norm(train: bool, *, name: str) -> BatchNorm:
    """BatchNorm equivalent to ``torch.nn.BatchNorm2d`` defaults (torch momentum 0.1 = 0.9 here).

    ``name`` must satisfy the normalization-name rule of :mod:`signticket.tree` (``bn*``,
    ``*_bn``, ...), which is how pruning and sign transfer tell norm parameters apart.
    """
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes of an NHWC batch."""
    return jnp.mean(x, axis=(1, 2))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 / stride-2 max-pool; ``"SAME"`` rounds odd sizes up (PyTorch ``ceil_mode=True``).

    On even sizes this is exactly PyTorch's default pool, gradient included: each window's
    gradient goes to its first maximal entry in row-major order (PyTorch's choice on ties, which
    after a ReLU are common: all-zero windows). Rounding up only matters for odd sizes, where it
    keeps deep stacks (VGG's five pools on 28x28) from shrinking to zero pixels.

    Written as a reshape and a max with a hand-written derivative (elementwise selects, usable
    in forward and reverse mode; :data:`INDEX_POOL_MAX_CHANNELS`) rather than ``nn.max_pool``,
    whose ``select_and_scatter`` gradient is 2.4-7x slower on CPU, or
    autodiff of the max, which splits ties with a division (VGG-11's CPU step: 1.16 s with
    autodiff, 1.10 s with this; the convnet's: no difference).
    """
    h, w = x.shape[1:3]
    ph, pw = h % 2, w % 2
    if ph or pw:  # odd size: pad at the end with -inf, as "SAME" does
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-jnp.inf)
    return _max_pool_even(x)


def _windows(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


def _window_entries(x: jax.Array) -> list[jax.Array]:
    """The four entries of every 2x2 window of ``x``, in row-major order: (0,0), (0,1), (1,0),
    (1,1), each at the pooled shape."""
    windows = _windows(x)
    return [windows[:, :, k // 2, :, k % 2] for k in range(4)]


def _slice_max(x: jax.Array) -> jax.Array:
    e00, e01, e10, e11 = _window_entries(x)
    return jnp.maximum(jnp.maximum(e00, e01), jnp.maximum(e10, e11))


def _reduce_max(x: jax.Array) -> jax.Array:
    return _windows(x).max(axis=(2, 4))


# Two primals with one derivative (:func:`_max_pool_jvp`). Not differentiated (evaluation,
# BatchNorm re-estimation), the pool is the elementwise maximum of the four strided entries,
# which XLA fuses with the BatchNorm before it: the convnet's test-set pass 1.2-1.3x faster than
# as a reduction. Differentiated, the rule computes the same maxima as a reduction, which the train
# steps' fusions were measured with (elementwise there: 0.88x). The maxima are equal; only the
# BatchNorm's multiply-add around them may round differently (one fused multiply-add where the
# reduction's fusion rounds twice).
_max_pool_even = jax.custom_jvp(_slice_max)
_max_pool_reduce = jax.custom_jvp(_reduce_max)


#: On CPUs without AVX-512, pools over at most this many channels send their gradient through
#: each window's index (:func:`_first_maximum_index`); everywhere else, through a one-hot mask
#: over the windows (:func:`_first_maximum`). Both give the same values and gradients, up
#: to the sign of a zero (each sums zeros somewhere).
#: Measured on the convnet (``docs/performance.md``): XLA's AVX2 code runs the mask's backward
#: pass on its 16-channel pool 4x slower than its AVX-512 code, and the index makes the AVX2
#: train step 1.08-1.17x faster; with AVX-512, or on 32 and 64 channels, the mask is faster.
INDEX_POOL_MAX_CHANNELS = 16


def pools_by_index(channels: int) -> bool:
    """Whether a 2x2 max-pool over ``channels`` routes its gradient by index here
    (:data:`INDEX_POOL_MAX_CHANNELS`)."""
    return (channels <= INDEX_POOL_MAX_CHANNELS and jax.default_backend() == "cpu"
            and not _xla_flags.xla_cpu_targets_avx512())


def _max_pool_jvp(primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    # A custom JVP rather than a custom VJP: reverse mode comes from transposing this linear
    # map (selects), and forward mode keeps working, which curvature's Hessian-vector
    # products (forward over reverse) need: y goes through this rule again there.
    (x,), (t,) = primals, tangents
    y = _max_pool_reduce(x)
    if pools_by_index(x.shape[-1]):
        return y, _tangent_by_index(x, y, t)
    return y, jnp.where(_first_maximum(x, y), _windows(t), 0.0).sum(axis=(2, 4))


_max_pool_even.defjvp(_max_pool_jvp)
_max_pool_reduce.defjvp(_max_pool_jvp)


def _tangent_by_index(x: jax.Array, y: jax.Array, t: jax.Array) -> jax.Array:
    first, entries = _first_maximum_index(x, y), _window_entries(t)
    tangent = entries[3]
    for k in (2, 1, 0):
        tangent = jnp.where(first == k, entries[k], tangent)
    return tangent


def _first_maximum(x: jax.Array, y: jax.Array) -> jax.Array:
    """One-hot mask over each 2x2 window of its first maximal entry in row-major order."""
    hit = _windows(x) == y[:, :, None, :, None, :]
    # Exactly one winner per window: the first hit in order (0,0), (0,1), (1,0), (1,1). A NaN
    # window has no hit; it picks (1,1).
    w00 = hit[:, :, 0, :, 0]
    w01 = hit[:, :, 0, :, 1] & ~w00
    w10 = hit[:, :, 1, :, 0] & ~(w00 | w01)
    w11 = ~(w00 | w01 | w10)
    top = jnp.stack([w00, w01], axis=3)
    bottom = jnp.stack([w10, w11], axis=3)
    return jnp.stack([top, bottom], axis=2)


def _first_maximum_index(x: jax.Array, y: jax.Array) -> jax.Array:
    """The same choice as :func:`_first_maximum`, as an int8 index at the pooled shape: 0 for
    (0,0), 1 for (0,1), 2 for (1,0), 3 for (1,1) (also a NaN window's). The backward pass then
    reads a quarter of the bytes and picks each window's entry with three selects."""
    entries = _window_entries(x)
    first = jnp.full(y.shape, 3, jnp.int8)
    for k in (2, 1, 0):  # the earliest hit is applied last, so it wins
        first = jnp.where(entries[k] == y, jnp.int8(k), first)
    return first
