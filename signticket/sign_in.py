"""Sign-In (Gadhikar et al., NeurIPS 2025): train each weight as ``theta = m * w``.

Gradient flow on ``(m, w)`` conserves ``m^2 - w^2 = c`` (the paper's beta) and gives ``theta``
the preconditioned flow ``d theta = -sqrt(4 theta^2 + c^2) grad L`` (:func:`preconditioner`):
the factor stays ``c`` at ``theta = 0``, so weights can cross zero (flip sign), unlike the
``c = 0`` product ``m * w`` of continuous sparsification, whose factor ``2 |theta|`` vanishes
there. Noise, discrete steps and weight decay shrink the balance over training; the *scaling
reset* re-initialises ``(m, w)`` from the current ``theta`` every ``reset_every`` steps in closed
form (:func:`balanced_init`), restoring ``m^2 - w^2 = c`` without changing theta.
The paper's recipe and what each default is pinned to: ``docs/protocols/sign_in.md``.

The caller's params stay plain ``theta``: :func:`sign_in` keeps ``(m, w)`` in its optimizer
state and returns updates with ``theta_new = M * m_new * w_new``, so the model, the engine,
checkpoints and every other pytree transform never see ``m`` and ``w``. Masks live in the state
too; ``optim.set_mask`` swaps them without recompiling (this module registers its surgery).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from signticket import optim
from signticket.errors import UserError
from signticket.masks import apply_mask, full_mask
from signticket.optim import _bool_like, _is_placeholder, register_mask_state
from signticket.tree import LeafPredicate, PyTree, check_same_structure, is_kernel, named_leaves


class MW(NamedTuple):
    """One reparameterised leaf as the inner transform sees it: ``theta = m * w``."""

    m: jax.Array
    w: jax.Array


class SignInState(NamedTuple):
    """State of :func:`sign_in`.

    ``mask``, ``m`` and ``w`` have the structure of params; ``m`` and ``w`` hold ``None`` at
    leaves that are not reparameterised. ``inner_state`` is the inner transform's state over
    the tree ``z`` that has :class:`MW` nodes in place of the reparameterised leaves.
    """

    step: jax.Array  # int32: updates applied so far (drives the reset schedule)
    c: PyTree  # float32 scalar per reparameterised leaf (None elsewhere): the balance m^2 - w^2
    #           (the paper's beta) set by init and restored by every reset
    mask: PyTree
    m: PyTree
    w: PyTree
    inner_state: optax.OptState


def balanced_init(theta: jax.Array, c: float | jax.Array = 1.0) -> MW:
    """``m = sqrt((c + sqrt(c^2 + 4 theta^2)) / 2)``, ``w = theta / m``: ``m * w = theta`` and
    ``m^2 - w^2 = c`` (at ``theta = 0``: ``m = sqrt(c), w = 0``)."""
    theta = jnp.asarray(theta)
    c = jnp.asarray(c, theta.dtype)
    m = jnp.sqrt((c + jnp.sqrt(c * c + 4.0 * theta * theta)) / 2.0)
    return MW(m, theta / m)


def preconditioner(theta: jax.Array, c: float | jax.Array = 1.0) -> jax.Array:
    """``m^2 + w^2 = sqrt(4 theta^2 + c^2)`` at balance ``c``: the factor by which gradient flow
    on ``(m, w)`` scales ``-grad_theta L`` (to first order in the step size, also for SGD)."""
    theta = jnp.asarray(theta)
    c = jnp.asarray(c, theta.dtype)
    return jnp.sqrt(4.0 * theta * theta + c * c)


BalanceSpec = float | Callable[[str, jax.Array], Any]


def relative_balance(k: float, floor: float = 1e-8) -> Callable[[str, jax.Array], jax.Array]:
    """A per-leaf ``c`` for :func:`sign_in`: ``k`` times the leaf's RMS at init (over its nonzero
    entries), i.e. beta relative to the layer's weight scale instead of the absolute ``c = 1``.
    With ``c >> |theta|`` the preconditioner is ~``c`` everywhere (Sign-In ~ SGD at ``c`` times
    the step size); with ``c ~ |theta|`` it differs between small and large weights."""

    def spec(name: str, x: jax.Array) -> jax.Array:
        del name
        x = jnp.asarray(x, jnp.float32)
        nz = jnp.sum(x != 0)
        rms = jnp.sqrt(jnp.sum(x * x) / jnp.maximum(nz, 1))
        return jnp.maximum(k * rms, floor)

    return spec


# -- small tree plumbing (flat lists in params' leaf order; m and w hold None at plain leaves) ---


def _where(pred, x):
    return jnp.where(pred, x, jnp.zeros_like(x))


def _z_tree(treedef, theta: list, m: list, w: list) -> PyTree:
    """The tree the inner transform works on: ``MW(m, w)`` at reparameterised leaves."""
    return jax.tree.unflatten(
        treedef, [t if mi is None else MW(mi, wi) for t, mi, wi in zip(theta, m, w, strict=True)]
    )


def _z_keep(treedef, mask: list, m: list, keep_mw: bool) -> PyTree:
    """A z-shaped bool tree: the mask at plain leaves; the mask (``keep_mw``) or False at MW."""
    out = []
    for mk, mi in zip(mask, m, strict=True):
        mk = jnp.asarray(mk, bool)
        k = mk if keep_mw else jnp.zeros_like(mk)
        out.append(mk if mi is None else MW(k, k))
    return jax.tree.unflatten(treedef, out)


def _zero_in_state(inner_state: Any, keep: PyTree) -> Any:
    """Zero every ``keep``-shaped subtree of ``inner_state`` (momentum, Adam moments) where
    ``keep`` is False; counts, schedules and other leaves are left alone."""
    keep_def = jax.tree.structure(keep)
    shapes = [jnp.shape(k) for k in jax.tree.leaves(keep)]

    def shaped(node) -> bool:
        try:
            if jax.tree.structure(node) != keep_def:
                return False
        except Exception:  # a node that is not a pytree is not z-shaped
            return False
        return [jnp.shape(x) for x in jax.tree.leaves(node)] == shapes

    def reset(node):
        return jax.tree.map(_where, keep, node) if shaped(node) else node

    return jax.tree.map(reset, inner_state, is_leaf=shaped)


def _flat(state: SignInState):
    """``(treedef, mask, m, w)`` of a state, as lists in params' leaf order."""
    treedef = jax.tree.structure(state.mask)
    return (treedef, treedef.flatten_up_to(state.mask), treedef.flatten_up_to(state.m),
            treedef.flatten_up_to(state.w))


def _rebalance(state: SignInState, reset_momentum: bool) -> SignInState:
    """The scaling reset: ``(m, w) = balanced_init(M * m * w, c)``; theta is unchanged."""
    treedef, mask, m, w = _flat(state)
    cs = treedef.flatten_up_to(state.c)
    new_m, new_w = [], []
    for mk, mi, wi, ci in zip(mask, m, w, cs, strict=True):
        if mi is None:
            new_m.append(None)
            new_w.append(None)
            continue
        mw = balanced_init(_where(mk, mi * wi), ci.astype(mi.dtype))
        new_m.append(mw.m)
        new_w.append(mw.w)
    inner_state = state.inner_state
    if reset_momentum:
        inner_state = _zero_in_state(inner_state, _z_keep(treedef, mask, m, keep_mw=False))
    return state._replace(
        m=jax.tree.unflatten(treedef, new_m), w=jax.tree.unflatten(treedef, new_w),
        inner_state=inner_state,
    )


# -- validation ----------------------------------------------------------------------------------


def _check_config(inner, reset_every, c, weight_decay, mw_weight_decay) -> None:
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            f"sign_in: inner must be an optax.GradientTransformation (e.g. optax.sgd(lr)), got "
            f"{type(inner).__name__}"
        )
    if not callable(c) and (not np.isfinite(c) or c <= 0):
        raise UserError(f"sign_in: c (the balance m^2 - w^2) must be > 0, got {c}")
    if reset_every is not None and (
        isinstance(reset_every, bool) or not isinstance(reset_every, int | np.integer)
        or reset_every <= 0
    ):
        raise UserError(
            f"sign_in: reset_every must be a positive number of steps or None (no resets), got "
            f"{reset_every!r}"
        )
    for name, v in (("weight_decay", weight_decay), ("mw_weight_decay", mw_weight_decay)):
        if v is not None and v < 0:
            raise UserError(f"sign_in: {name} must be >= 0, got {v}")


def _check_params(params: PyTree, chosen: list[bool]) -> None:
    for (name, p), ch in zip(named_leaves(params), chosen, strict=True):
        if ch and not jnp.issubdtype(jnp.result_type(p), jnp.floating):
            raise TypeError(
                f"sign_in: cannot reparameterise non-differentiable leaf {name!r} of dtype "
                f"{jnp.result_type(p)}; only floating-point leaves can be trained as m * w"
            )


def _check_inner_state(inner_state: Any) -> None:
    for name, leaf in named_leaves(inner_state):
        if not isinstance(leaf, jax.Array | np.ndarray | np.generic | float | int):
            raise TypeError(
                f"sign_in: the inner transform's state holds a non-array leaf at {name!r} "
                f"({type(leaf).__name__}); it cannot be jitted, differentiated or checkpointed"
            )


def _leaf_c(c: BalanceSpec, name: str, theta: jax.Array) -> jax.Array:
    """The balance of one leaf as a float32 scalar (checked > 0 where concrete)."""
    v = jnp.asarray(c(name, theta) if callable(c) else c, jnp.float32)
    if jnp.shape(v) != ():
        raise UserError(f"sign_in: c for {name!r} must be a scalar, got shape {jnp.shape(v)}")
    if not isinstance(v, jax.core.Tracer) and not (np.isfinite(float(v)) and float(v) > 0):
        raise UserError(f"sign_in: c (the balance m^2 - w^2) must be > 0, got {float(v)} for "
                         f"{name!r}")
    return v


# -- the transform -------------------------------------------------------------------------------


def sign_in(
    inner: optax.GradientTransformation,
    mask: PyTree | None = None,
    *,
    reset_every: int | None,
    c: BalanceSpec = 1.0,
    reset_momentum: bool = False,
    weight_decay: float = 0.0,
    mw_weight_decay: float | None = None,
    reparam: LeafPredicate = is_kernel,
    normalize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Sign-In: train the ``reparam`` leaves as ``theta = M * m * w`` with ``inner`` on ``(m, w)``.

    ``(dm, dw) = (M g w + λ_mw m, M g m + λ_mw w)``; other leaves get ``M g + λ theta``. Every
    ``reset_every`` steps ``(m, w) <- balanced_init(theta, c)`` (theta unchanged); with
    ``reset_momentum`` the inner state of ``(m, w)`` (momentum, moments) is zeroed too.
    To first order in the step size theta moves by ``-lr * preconditioner(theta, c) * g``.

    Args:
        inner: the optimizer of ``(m, w)`` and of the other leaves (e.g. ``optax.sgd(lr, 0.9)``).
            Give weight decay here, not in ``inner``: decay inside ``inner`` acts on every leaf
            it sees, ``m`` and ``w`` included.
        mask: bool tree like params (None: dense). Pruned entries are exactly 0 and keep
            ``(m, w) = (sqrt(c), 0)``; change it with :func:`set_mask`.
        reset_every: scaling-reset period in *steps* (experiments convert epochs), or None for
            no resets. Required, because the paper reports the reset is what makes Sign-In work.
        c: the balance ``m^2 - w^2`` (the paper's beta) set at init and at every reset: a
            number > 0 (the paper: 1), or ``(path, leaf) -> value`` evaluated on the init
            params, one value per leaf (e.g. :func:`relative_balance`; layer-wise beta).
        reset_momentum: also zero the inner state of ``(m, w)`` at each reset. Default False:
            the paper's reset rewrites ``(m, w)`` only; a PyTorch implementation that resets
            ``.data`` keeps the optimizer's buffers (see docs/protocols/sign_in.md).
        weight_decay: coupled (PyTorch) decay ``λ`` of the leaves that are not reparameterised.
        mw_weight_decay: decay ``λ_mw`` of ``m`` and of ``w`` (default: ``weight_decay``). It is
            what shrinks ``m^2 - w^2``; on theta it acts like a decay of about ``2 λ_mw``, so
            ``weight_decay / 2`` matches the baseline's effective decay.
        reparam: which leaves are trained as ``m * w`` (default: conv and dense kernels).
        normalize: divide each leaf's loss gradient on ``(m, w)`` by its ``c``, so theta moves by
            ``-lr sqrt(1 + 4 theta^2 / c^2) g``: the plain step at theta = 0 whatever ``c``. Not
            in the paper (an experiment knob for ``c`` relative to the weight scale, where the
            unnormalised step near 0 would be ``c`` times smaller than SGD's).

    The params passed to ``update`` must be the current theta: the returned updates are exact
    differences ``M m w - theta``, so ``sign_in`` must be the *last* transform of a chain.
    """
    _check_config(inner, reset_every, c, weight_decay, mw_weight_decay)
    lam = float(weight_decay)
    lam_mw = lam if mw_weight_decay is None else float(mw_weight_decay)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> SignInState:
        if _is_placeholder(params):
            # optax.tree_utils.tree_map_params: only the mask field is params-shaped; (m, w) and
            # the inner state (over the (m, w) tree) are Sign-In's own, handled by its surgery.
            z = jnp.zeros(())
            return SignInState(step=z, c=z, mask=params, m=z, w=z, inner_state=z)
        msk = full_mask(params) if mask is None else mask
        check_same_structure(params, msk, "params", "mask")
        leaves, treedef = jax.tree.flatten(params)
        msk = [jnp.asarray(x, bool) for x in treedef.flatten_up_to(msk)]
        chosen = [bool(reparam(name, x)) for name, x in named_leaves(params)]
        _check_params(params, chosen)
        theta = apply_mask(leaves, msk)
        names = [n for n, _ in named_leaves(params)]
        cs = [_leaf_c(c, n, t) if ch else None
              for n, t, ch in zip(names, theta, chosen, strict=True)]
        mw = [balanced_init(t, ci) if ch else MW(None, None)
              for t, ci, ch in zip(theta, cs, chosen, strict=True)]
        m = [x.m for x in mw]
        w = [x.w for x in mw]
        inner_state = inner.init(_z_tree(treedef, theta, m, w))
        _check_inner_state(inner_state)
        return SignInState(
            step=jnp.zeros((), jnp.int32), c=jax.tree.unflatten(treedef, cs),
            mask=jax.tree.unflatten(treedef, msk), m=jax.tree.unflatten(treedef, m),
            w=jax.tree.unflatten(treedef, w), inner_state=inner_state,
        )

    def update_fn(grads: PyTree, state: SignInState, params: PyTree | None = None, **extra_args):
        if params is None:
            raise UserError(
                "sign_in: update needs params (the current theta): call "
                "tx.update(grads, state, params)"
            )
        treedef, mask, m, w = _flat(state)
        theta = treedef.flatten_up_to(params)
        cs = treedef.flatten_up_to(state.c)
        dz = []
        for g, mk, p, mi, wi, ci in zip(treedef.flatten_up_to(grads), mask, theta, m, w, cs,
                                        strict=True):
            g = _where(mk, g)
            if mi is None:
                dz.append(_where(mk, g + lam * p) if lam else g)
            else:
                if normalize:
                    g = g / ci.astype(g.dtype)
                dz.append(MW(_where(mk, g * wi + lam_mw * mi), _where(mk, g * mi + lam_mw * wi)))
        z = _z_tree(treedef, theta, m, w)
        u, inner_state = inner.update(jax.tree.unflatten(treedef, dz), state.inner_state, z,
                                      **extra_args)
        # Masking the inner output too means momentum and decay never move pruned entries.
        u = treedef.flatten_up_to(
            jax.tree.map(_where, _z_keep(treedef, mask, m, keep_mw=True), u)
        )
        new = state._replace(
            step=state.step + 1,
            m=jax.tree.unflatten(treedef, [None if mi is None else mi + ui.m
                                           for mi, ui in zip(m, u, strict=True)]),
            w=jax.tree.unflatten(treedef, [None if wi is None else wi + ui.w
                                           for wi, ui in zip(w, u, strict=True)]),
            inner_state=inner_state,
        )
        if reset_every is not None:
            reset = _rebalance(new, reset_momentum)
            do = new.step % reset_every == 0
            new = jax.tree.map(lambda a, b: jnp.where(do, a, b), reset, new)
        _, _, m, w = _flat(new)
        # Exact differences, so the caller's apply_updates lands on theta = M * m * w (pruned
        # entries: 0 - theta, i.e. exactly 0 even if the caller never masked its params).
        updates = [ui if mi is None else _where(mk, mi * wi) - p
                   for ui, mk, p, mi, wi in zip(u, mask, theta, m, w, strict=True)]
        return jax.tree.unflatten(treedef, updates), new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# -- state surgery: masks and resets outside the update (RiGL, pruning rounds, hooks) -----------


def _is_state(node) -> bool:
    return isinstance(node, SignInState)


def _set_sign_in_mask(state: SignInState, new_mask: PyTree) -> SignInState:
    """New mask; every entry that is not kept active (pruned, or newly grown) restarts at
    ``(m, w) = (sqrt(c), 0)`` with zero inner state, so theta is 0 there."""
    check_same_structure(state.mask, new_mask, "current mask", "new mask")
    return _restart_unkept(state, _bool_like(new_mask, state.mask))


@jax.jit  # one program per architecture, not eager selects compiled once per leaf shape
def _restart_unkept(state: SignInState, new_mask: PyTree) -> SignInState:
    treedef, old, m, w = _flat(state)
    new = treedef.flatten_up_to(new_mask)
    kept = [o & n for o, n in zip(old, new, strict=True)]
    cs = treedef.flatten_up_to(state.c)
    m = [None if mi is None else jnp.where(k, mi, jnp.sqrt(ci).astype(mi.dtype))
         for mi, k, ci in zip(m, kept, cs, strict=True)]
    w = [None if wi is None else _where(k, wi) for wi, k in zip(w, kept, strict=True)]
    inner_state = _zero_in_state(state.inner_state, _z_keep(treedef, kept, m, keep_mw=True))
    return state._replace(
        mask=jax.tree.unflatten(treedef, new), m=jax.tree.unflatten(treedef, m),
        w=jax.tree.unflatten(treedef, w), inner_state=inner_state,
    )


register_mask_state(SignInState, _set_sign_in_mask)
# set_mask / get_mask for any optimizer state, Sign-In's included (re-exported from optim).
set_mask, get_mask = optim.set_mask, optim.get_mask


def sign_in_states(opt_state: Any) -> list[SignInState]:
    """Every :class:`SignInState` inside ``opt_state``, in flattening order."""
    return [n for n in jax.tree.leaves(opt_state, is_leaf=_is_state) if _is_state(n)]


def reset_scaling(opt_state: Any, reset_momentum: bool = False) -> Any:
    """Apply the scaling reset now to every :class:`SignInState` in ``opt_state`` (theta is
    unchanged), e.g. from an ``on_epoch_end`` hook instead of ``reset_every``."""
    if not sign_in_states(opt_state):
        raise UserError("reset_scaling: opt_state holds no SignInState; build it with sign_in()")
    return jax.tree.map(
        lambda n: _rebalance(n, reset_momentum) if _is_state(n) else n, opt_state, is_leaf=_is_state
    )


def reparameterized(opt_state: Any) -> tuple[PyTree, PyTree]:
    """``(m, w)`` of the (single) Sign-In state in ``opt_state``; None at plain leaves."""
    states = sign_in_states(opt_state)
    if len(states) != 1:
        raise UserError(f"expected one SignInState in opt_state, found {len(states)}")
    return states[0].m, states[0].w
