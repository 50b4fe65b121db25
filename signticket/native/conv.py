"""oneDNN 2D convolutions as JAX primitives for the CPU backend.

XLA:CPU's convolution kernels run input gradients 1.3-2x and kernel gradients 2.6-5x slower
than oneDNN's on our conv shapes (``python -m bench.conv_ops``), and convolutions are ~80% of a
ResNet-20 train step. This module exposes oneDNN's forward, input-gradient and kernel-gradient
convolutions (C++ in ``onednn_conv.cc``, XLA FFI custom calls) as three primitives that close
under differentiation, like ``lax.conv_general_dilated`` itself:

    conv(x, w)             y[n, p, o] = sum_{k, c} pad(x)[n, s * p + k, c] * w[k, c, o]
    input_grad(dy, w)      the adjoint of x -> conv(x, w), applied to dy
    kernel_grad(x, dy)     the adjoint of w -> conv(x, w), applied to dy

Each is bilinear, and the transpose of each in either argument is another of the three, so
reverse mode, forward mode and any nesting of them (GraSP's Hessian-vector products are
``jvp`` of ``grad``) stay on oneDNN. Under ``vmap``, a batch of inputs with shared weights is
folded into the conv's batch dimension; batched weights (vmapped seeds) become a leading
members axis that one custom call loops over in place. Layouts are NHWC / HWIO / NHWC,
float32 (or bfloat16 where the CPU has it), explicit padding, no dilation, no groups:
:func:`supports` says whether a conv qualifies, and :mod:`signticket.models.layers` routes
qualifying convs here on a single-device CPU backend.

Every conv geometry is verified before XLA may call it: :func:`self_check` runs the three ops
on random operands (also from two threads at once) against a direct-loop reference, and a
geometry that fails is lowered to XLA's own conv instead, with one warning. Verdicts are cached
per geometry, dtype, oneDNN version, instruction set and library build.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import dispatch  # apply_primitive: the eager rule every lax primitive uses
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from signticket.native import build

# Nested vmaps over an already member-batched op: above this many members, a loop instead of
# one custom call each (keeps compiled programs small).
MAX_UNROLLED_MEMBERS = 16
ENV_BACKEND = "SIGNTICKET_CONV"  # "auto" (default), "xla" or "onednn"
#: the library's OpenMP team placement (team_placement.h): "auto" (default), "1" always, "0" off
ENV_PLACE_TEAMS = "SIGNTICKET_CONV_PLACE_TEAMS"
_TARGETS = ("forward", "input_grad", "kernel_grad")
_NOT_MAPPED = None  # how batching rules mark an unbatched operand


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """Load the library built at setup (``python -m signticket.native``) and register its FFI
    targets once: ``(lib, "")`` or ``(None, why not)``. Never compiles: a model being traced
    must not wait for a compiler."""
    path, reason = build.library_path(build=False)
    if path is None:
        return None, reason
    try:
        lib = ctypes.cdll.LoadLibrary(str(path))
    except OSError as e:
        return None, f"loading {path} failed: {e}"
    lib.signticket_conv_self_check.restype = ctypes.c_int
    lib.signticket_conv_self_check.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.c_int,
                                               ctypes.c_char_p, ctypes.c_int]
    for name in _TARGETS:
        jax.ffi.register_ffi_target(f"signticket_conv_{name}",
                                    jax.ffi.pycapsule(getattr(lib, f"signticket_conv_{name}")),
                                    platform="cpu")
    return lib, ""


def _load() -> str:
    return _library()[1]


@functools.cache
def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 convs natively in oneDNN (AVX512-BF16 or newer)."""
    lib = _library()[0]
    return lib is not None and bool(lib.signticket_conv_bf16_supported())


# -- self-check -------------------------------------------------------------------------------

class Verdict(NamedTuple):
    """Whether oneDNN computes a conv geometry correctly here; ``detail`` says what failed."""

    ok: bool
    detail: str


# (n, h, w, c, kh, kw, o, stride h, stride w, pad top, bottom, left, right)
Geometry = tuple[int, ...]


def geometry(x_shape: Sequence[int], w_shape: Sequence[int], strides: Sequence[int],
             padding: Sequence[tuple[int, int]]) -> Geometry:
    """The identity of a conv for :func:`self_check`: NHWC input and HWIO kernel shapes,
    strides and explicit padding."""
    n, h, w, c = x_shape
    kh, kw, _, o = w_shape
    return tuple(int(v) for v in (n, h, w, c, kh, kw, o, *strides,
                                  *(p for pair in padding for p in pair)))


def runtime() -> str:
    """``"oneDNN <version>, <instruction set>"`` as oneDNN dispatches here (honours
    ``ONEDNN_MAX_CPU_ISA``); ``""`` without the library."""
    lib = _library()[0]
    if lib is None:
        return ""
    buffer = ctypes.create_string_buffer(128)
    lib.signticket_conv_runtime(buffer, len(buffer))
    return buffer.value.decode()


def _verdict_file(geom: Geometry, dtype: str) -> Path | None:
    path, _ = build.library_path(build=False)
    if path is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", runtime())
    return path.parent / "verdicts" / slug / f"{dtype}-{'_'.join(map(str, geom))}.json"


def _read_verdict(file: Path | None) -> Verdict | None:
    try:
        stored = json.loads(file.read_text())
        return Verdict(bool(stored["ok"]), str(stored["detail"]))
    except (AttributeError, OSError, ValueError, KeyError, TypeError):
        return None  # absent, unreadable or half-written: check again


def _write_verdict(file: Path | None, verdict: Verdict) -> None:
    if file is None:
        return
    try:  # atomic: concurrent processes (pytest-xdist workers) never read half a file
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=file.parent, suffix=".tmp", delete=False) as f:
            json.dump(verdict._asdict(), f)
        Path(f.name).replace(file)
    except OSError:
        pass  # an unwritable cache costs a re-check next process, nothing else


def check_now(geom: Geometry, dtype: str = "float32") -> Verdict:
    """Run the self-check of :func:`self_check` now, bypassing its caches."""
    lib = _library()[0]
    if lib is None:
        return Verdict(False, unavailable_reason())
    message = ctypes.create_string_buffer(512)
    status = lib.signticket_conv_self_check((ctypes.c_int64 * 13)(*geom),
                                            int(dtype == "bfloat16"), message, len(message))
    return Verdict(status == 1, message.value.decode())


@functools.cache
def self_check(geom: Geometry, dtype: str = "float32") -> Verdict:
    """Whether oneDNN's forward, input-gradient and kernel-gradient convs of geometry ``geom``
    (:func:`geometry`) in ``dtype`` are correct on this machine, checked once: each op runs on
    random operands twice at once from two threads; both outputs must be
    bit-identical, finite and equal to a direct-loop reference on every element (large convs:
    on elements covering every index of every axis). Cached in memory and next to the library,
    keyed by oneDNN version and instruction set. A failing geometry warns once and runs on XLA
    (see the lowering below)."""
    if not available():
        return Verdict(False, unavailable_reason())
    file = _verdict_file(geom, dtype)
    verdict = _read_verdict(file)
    if verdict is None:
        verdict = check_now(geom, dtype)
        _write_verdict(file, verdict)
    if not verdict.ok:
        warnings.warn(f"signticket: oneDNN failed its self-check on conv {geom} ({dtype}, "
                      f"{runtime()}): {verdict.detail}; this conv runs on XLA's kernels",
                      RuntimeWarning, stacklevel=2)
    return verdict


def unavailable_reason() -> str:
    """Why oneDNN convolutions cannot run here (``""`` when they can)."""
    return _load()


def available() -> bool:
    """Whether the oneDNN library is built, loaded and registered with XLA."""
    return not _load()


def enabled() -> bool:
    """Whether :mod:`signticket.models.layers` should send qualifying convs to oneDNN now.

    ``SIGNTICKET_CONV=xla`` turns it off, ``=onednn`` makes an unavailable library an error;
    by default it is on for a single-device CPU backend when the library is available. (With
    several devices XLA would replicate the custom call instead of sharding it.)
    """
    choice = os.environ.get(ENV_BACKEND, "auto")
    if choice not in ("auto", "xla", "onednn"):
        raise ValueError(f"{ENV_BACKEND}={choice!r}: expected 'auto', 'xla' or 'onednn'")
    if choice == "xla":
        return False
    if choice == "onednn":
        if not available():
            raise RuntimeError(f"{ENV_BACKEND}=onednn but {unavailable_reason()}")
        return jax.default_backend() == "cpu"
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return False
    if not available():
        _warn_fallback_once()
        return False
    return True


#: what ``signticket_conv_team_placement()`` reports, by its value
_PLACEMENTS = ("off", "auto", "always")


def team_placement() -> str:
    """How oneDNN convs here place their OpenMP teams, as the library decides it
    (``team_placement.h``):
    ``"auto"`` (the default: pinned one member per CPU while no other process loads this
    process's CPUs), ``"always"`` (``SIGNTICKET_CONV_PLACE_TEAMS=1``) or ``"off"`` (``=0``, the
    library unused, or a team that is not one thread per usable CPU)."""
    if not enabled():
        return "off"
    return _PLACEMENTS[_library()[0].signticket_conv_team_placement()]


@functools.cache
def _warn_fallback_once() -> None:
    warnings.warn(f"signticket: convolutions stay on XLA's CPU kernels (2-4x slower gradients): "
                  f"{unavailable_reason()}", RuntimeWarning, stacklevel=3)


def supports(x: jax.Array, w: jax.Array, padding: Sequence[tuple[int, int]]) -> bool:
    """Whether ``conv(x, w)`` (NHWC x HWIO) is one this module computes: float32, or bfloat16
    on CPUs with native bfloat16 (:func:`bf16_supported`)."""
    dtypes_ok = x.dtype == w.dtype and (
        x.dtype == jnp.float32 or (x.dtype == jnp.bfloat16 and bf16_supported()))
    return (x.ndim == 4 and w.ndim == 4 and x.shape[-1] == w.shape[2] and dtypes_ok
            and len(padding) == 2 and all(p >= 0 for pair in padding for p in pair)
            and all(i + lo + hi >= k for i, k, (lo, hi)
                    in zip(x.shape[1:3], w.shape[:2], padding, strict=True))
            and all(d > 0 for d in x.shape + w.shape))


def _output_hw(in_hw, kernel_hw, strides, padding):
    return tuple((i + lo + hi - k) // s + 1
                 for i, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides, padding, strict=True))


_UNBATCHED = (False, False)


def _params(strides, padding):
    return dict(strides=tuple(int(s) for s in strides),
                padding=tuple((int(lo), int(hi)) for lo, hi in padding), batched=_UNBATCHED)


conv_p = Primitive("signticket_onednn_conv")
input_grad_p = Primitive("signticket_onednn_conv_input_grad")
kernel_grad_p = Primitive("signticket_onednn_conv_kernel_grad")


def conv(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
         padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> jax.Array:
    """``y = conv(x, w)`` on oneDNN: x [N, H, W, C], w [KH, KW, C, O] -> y [N, OH, OW, O],
    explicit ``((top, bottom), (left, right))`` padding; equals ``lax.conv_general_dilated``
    with NHWC/HWIO/NHWC dimension numbers."""
    if not supports(x, w, padding):
        raise ValueError(f"onednn conv: unsupported operands x {x.shape} {x.dtype}, w {w.shape} "
                         f"{w.dtype}, padding {padding} (NHWC x HWIO, float32 or bfloat16, "
                         "padding >= 0)")
    if not available():
        raise RuntimeError(f"onednn conv: {unavailable_reason()}")
    return conv_p.bind(x, w, **_params(strides, padding))


# -- shapes ----------------------------------------------------------------------------------
# ``batched = (a, b)`` says which operand carries a leading axis of vmapped members (see the
# batching rules below); the output carries it when either does.

def _members(a, b, batched) -> tuple[int, ...]:
    if batched[0]:
        return (a.shape[0],)
    return (b.shape[0],) if batched[1] else ()


def _per_member(shape, is_batched):
    return tuple(shape[1:]) if is_batched else tuple(shape)


def _conv_abstract(x, w, *, strides, padding, batched):
    xs, ws = _per_member(x.shape, batched[0]), _per_member(w.shape, batched[1])
    oh, ow = _output_hw(xs[1:3], ws[:2], strides, padding)
    return jax.core.ShapedArray((*_members(x, w, batched), xs[0], oh, ow, ws[3]), x.dtype)


def _input_grad_abstract(dy, w, *, strides, padding, batched, input_shape):
    return jax.core.ShapedArray((*_members(dy, w, batched), *input_shape), dy.dtype)


def _kernel_grad_abstract(x, dy, *, strides, padding, batched, kernel_shape):
    return jax.core.ShapedArray((*_members(x, dy, batched), *kernel_shape), x.dtype)


# Outside jit, a bind compiles and runs the single op, as lax's own primitives do.
for _prim in (conv_p, input_grad_p, kernel_grad_p):
    _prim.def_impl(functools.partial(dispatch.apply_primitive, _prim))
conv_p.def_abstract_eval(_conv_abstract)
input_grad_p.def_abstract_eval(_input_grad_abstract)
kernel_grad_p.def_abstract_eval(_kernel_grad_abstract)


# -- lowering to the FFI custom calls ----------------------------------------------------------

def _lowered_shapes(target, ctx, batched):
    """The per-member input and kernel shapes of a custom call being lowered."""
    a, b = (_per_member(aval.shape, m) for aval, m in zip(ctx.avals_in, batched, strict=True))
    out = _per_member(ctx.avals_out[0].shape, any(batched))
    return {"forward": (a, b), "input_grad": (out, b), "kernel_grad": (a, out)}[target]


def _xla_op(target, strides, padding, batched, out_member_shape):
    """The same op on XLA's conv: the fallback for geometries that fail :func:`self_check`."""
    def conv_xla(x, w):
        return lax.conv_general_dilated(x, w, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def one(a, b):
        if target == "forward":
            return conv_xla(a, b)
        zeros = jnp.zeros(out_member_shape, a.dtype)
        if target == "input_grad":
            return jax.vjp(lambda x: conv_xla(x, b), zeros)[1](a)[0]
        return jax.vjp(lambda w: conv_xla(a, w), zeros)[1](b)[0]

    if not any(batched):
        return one
    return jax.vmap(one, in_axes=tuple(0 if m else None for m in batched))


def _lowering(target):
    rule = jax.ffi.ffi_lowering(f"signticket_conv_{target}")

    def lower(ctx, a, b, *, strides, padding, batched, **_shape):
        x_shape, w_shape = _lowered_shapes(target, ctx, batched)
        dtype = str(ctx.avals_in[0].dtype)
        if not self_check(geometry(x_shape, w_shape, strides, padding), dtype).ok:
            out_member_shape = _per_member(ctx.avals_out[0].shape, any(batched))
            fallback = _xla_op(target, strides, padding, batched, out_member_shape)
            return mlir.lower_fun(fallback, multiple_results=False)(ctx, a, b)
        return rule(ctx, a, b, strides=np.asarray(strides, np.int64),
                    padding=np.asarray([p for pair in padding for p in pair], np.int64),
                    batched=np.asarray(batched, np.int64))

    return lower


for _prim, _target in zip((conv_p, input_grad_p, kernel_grad_p), _TARGETS, strict=True):
    mlir.register_lowering(_prim, _lowering(_target), platform="cpu")


# -- differentiation: each op is bilinear; its transposes are the other two ---------------------
# With vmapped members, an operand shared by all members gets the sum of their cotangents.

def _member_shape(undefined, is_batched):
    return _per_member(undefined.aval.shape, is_batched)


def _shared_sum(g, out_batched, operand_batched):
    return g.sum(0) if out_batched and not operand_batched else g


def _conv_t_x(ct, x, w, *, strides, padding, batched):
    (bx, bw), ob = batched, any(batched)
    g = input_grad_p.bind(ct, w, strides=strides, padding=padding, batched=(ob, bw),
                          input_shape=_member_shape(x, bx))
    return _shared_sum(g, ob, bx)


def _conv_t_w(ct, x, w, *, strides, padding, batched):
    (bx, bw), ob = batched, any(batched)
    g = kernel_grad_p.bind(x, ct, strides=strides, padding=padding, batched=(bx, ob),
                           kernel_shape=_member_shape(w, bw))
    return _shared_sum(g, ob, bw)


def _input_grad_t_dy(ct, dy, w, *, strides, padding, batched, input_shape):
    (bdy, bw), ob = batched, any(batched)
    g = conv_p.bind(ct, w, strides=strides, padding=padding, batched=(ob, bw))
    return _shared_sum(g, ob, bdy)


def _input_grad_t_w(ct, dy, w, *, strides, padding, batched, input_shape):
    (bdy, bw), ob = batched, any(batched)
    g = kernel_grad_p.bind(ct, dy, strides=strides, padding=padding, batched=(ob, bdy),
                           kernel_shape=_member_shape(w, bw))
    return _shared_sum(g, ob, bw)


def _kernel_grad_t_x(ct, x, dy, *, strides, padding, batched, kernel_shape):
    (bx, bdy), ob = batched, any(batched)
    g = input_grad_p.bind(dy, ct, strides=strides, padding=padding, batched=(bdy, ob),
                          input_shape=_member_shape(x, bx))
    return _shared_sum(g, ob, bx)


def _kernel_grad_t_dy(ct, x, dy, *, strides, padding, batched, kernel_shape):
    (bx, bdy), ob = batched, any(batched)
    g = conv_p.bind(x, ct, strides=strides, padding=padding, batched=(bx, ob))
    return _shared_sum(g, ob, bdy)


ad.defbilinear(conv_p, _conv_t_x, _conv_t_w)
ad.defbilinear(input_grad_p, _input_grad_t_dy, _input_grad_t_w)
ad.defbilinear(kernel_grad_p, _kernel_grad_t_x, _kernel_grad_t_dy)


# -- vmap --------------------------------------------------------------------------------------
# Shared weights: the vmapped axis joins the conv's batch axis (one conv). Otherwise the vmapped
# axis becomes the members axis: one custom call, one conv per member on offsets into the same
# buffers. A vmap over an already member-batched op (nested vmaps) binds once per member.

def _fold_into_batch(prim, args, dims, params, shape_param):
    a, b = args
    n_axis = 1 if params["batched"][0] else 0
    a = jnp.moveaxis(a, dims[0], n_axis)
    new, n = a.shape[n_axis], a.shape[n_axis + 1]
    a = a.reshape(*a.shape[:n_axis], new * n, *a.shape[n_axis + 2:])
    if shape_param is not None:
        params = {**params, shape_param: (new * n, *params[shape_param][1:])}
    out = prim.bind(a, b, **params)
    out_n_axis = 1 if any(params["batched"]) else 0
    return out.reshape(*out.shape[:out_n_axis], new, n, *out.shape[out_n_axis + 1:]), out_n_axis


def _as_members(prim, args, dims, params):
    mapped = tuple(d is not _NOT_MAPPED for d in dims)
    a, b = (jnp.moveaxis(x, d, 0) if m else x for x, d, m in zip(args, dims, mapped, strict=True))
    return prim.bind(a, b, **{**params, "batched": mapped}), 0


def _per_member_binds(prim, args, dims, params):
    mapped = [d is not _NOT_MAPPED for d in dims]
    size = next(a.shape[d] for a, d, m in zip(args, dims, mapped, strict=True) if m)
    args = [jnp.moveaxis(a, d, 0) if m else a for a, d, m in zip(args, dims, mapped, strict=True)]

    def member(batched_slices):
        it = iter(batched_slices)
        operands = [next(it) if m else a for a, m in zip(args, mapped, strict=True)]
        return prim.bind(*operands, **params)

    batched = [a for a, m in zip(args, mapped, strict=True) if m]
    if size <= MAX_UNROLLED_MEMBERS:
        return jnp.stack([member([a[i] for a in batched]) for i in range(size)]), 0
    return lax.map(member, batched), 0


def _batch_rule(prim, shape_param, foldable):
    def rule(args, dims, **params):
        if foldable and dims[1] is _NOT_MAPPED:
            return _fold_into_batch(prim, args, dims, params, shape_param)
        if params["batched"] == _UNBATCHED:
            return _as_members(prim, args, dims, params)
        return _per_member_binds(prim, args, dims, params)

    return rule


batching.primitive_batchers[conv_p] = _batch_rule(conv_p, None, foldable=True)
batching.primitive_batchers[input_grad_p] = _batch_rule(input_grad_p, "input_shape", foldable=True)
# The kernel gradient sums over the conv's batch axis: vmapped members never fold into it.
batching.primitive_batchers[kernel_grad_p] = _batch_rule(kernel_grad_p, None, foldable=False)
