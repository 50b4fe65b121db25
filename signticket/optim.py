"""Optax transforms: masked updates, and the papers' optimizers.

``masked_updates(inner)`` keeps pruned weights exactly zero. Its mask lives in the optimizer state
as an array, so a new mask between pruning rounds is a new *value* (:func:`set_mask`), never a
recompile. State surgery goes through ``optax.tree_utils``: :func:`get_mask` / :func:`set_mask`
find mask fields by name (``tree_get_all_with_path`` / ``tree_set``), and the optimizer state
that belongs to params (momentum, Adam moments) is located with ``tree_map_params``, never by
matching structures and shapes. Transforms that keep more than a mask (Sign-In's ``(m, w)``)
register their own surgery with :func:`register_mask_state`; ``signticket.sign_in`` does so on
import, and this module imports it only lazily (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from signticket.masks import full_mask
from signticket.tree import PyTree, check_same_structure


class MaskedState(NamedTuple):
    """State of :func:`masked_updates`: the bool mask and the inner transform's state."""

    mask: PyTree
    inner_state: optax.OptState


def _zero_where_pruned(tree: PyTree, mask: PyTree) -> PyTree:
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), tree, mask)


def _is_placeholder(params: PyTree) -> bool:
    """True for the leafless stand-in ``optax.tree_utils.tree_map_params`` passes to ``init``."""
    return not jax.tree.leaves(params) and type(params).__name__ == "_ParamsPlaceholder"


def masked_updates(
    inner: optax.GradientTransformation, mask: PyTree | None = None
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` so pruned entries get exactly zero updates.

    ``u = M ⊙ inner(M ⊙ g)``: gradients are masked before ``inner`` and its output after it
    (weight decay and momentum cannot leak back). The params-shaped parts of ``inner``'s state
    (momentum, moments; found with ``tree_map_params``) are zeroed where pruned before each
    update, so a mask changed by :func:`set_mask` needs no surgery of ``inner``'s state to be
    exact: a pruned entry's state is 0 whenever it is regrown. ``mask=None`` starts dense (all
    True), so dense and sparse phases share one compiled step.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> MaskedState:
        if _is_placeholder(params):  # tree_map_params: the mask is params-shaped
            return MaskedState(mask=params, inner_state=inner.init(params))
        m = full_mask(params) if mask is None else mask
        check_same_structure(params, m, "params", "mask")
        m = jax.tree.map(lambda x: jnp.asarray(x, bool), m)
        return MaskedState(mask=m, inner_state=inner.init(params))

    def update_fn(updates, state: MaskedState, params=None, **extra_args):
        inner_state = otu.tree_map_params(inner, _zero_where_pruned_leaf, state.inner_state,
                                          state.mask)
        updates = _zero_where_pruned(updates, state.mask)
        updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
        updates = _zero_where_pruned(updates, state.mask)
        return updates, MaskedState(state.mask, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _zero_where_pruned_leaf(x, m):
    return jnp.where(m, x, jnp.zeros_like(x))


#: Deprecated alias of :func:`masked_updates` (the old name collides with ``optax.masked``, which
#: selects *which leaves* a transform sees); kept because many call sites outside this module
#: use it.
masked = masked_updates


# -- state surgery --------------------------------------------------------------------------------

#: NamedTuple name -> ``surgery(state, new_bool_mask) -> state`` of transforms holding a mask.
_MASK_STATES: dict[str, Callable[[Any, PyTree], Any]] = {}


def register_mask_state(cls: type, surgery: Callable[[Any, PyTree], Any]) -> None:
    """Make :func:`set_mask` / :func:`get_mask` see the ``mask`` field of ``cls`` (a NamedTuple)
    and apply ``surgery(state, new_mask)`` to it (after the mask field itself is replaced)."""
    _MASK_STATES[cls.__name__] = surgery


def _is_mask_field(path, value) -> bool:
    last = path[-1] if path else None
    return isinstance(last, otu.NamedTupleKey) and last.tuple_name in _MASK_STATES


def _mask_fields(opt_state: Any) -> list:
    _ensure_registered()
    return otu.tree_get_all_with_path(opt_state, "mask", filtering=_is_mask_field)


def _bool_like(new: PyTree, old: PyTree) -> PyTree:
    """``new`` as bool arrays on the shardings of ``old`` where those are concrete and committed
    (a mask given by the caller is uncommitted; a changed placement would recompile the step)."""

    def one(n, o):
        n = jnp.asarray(n, bool)
        if isinstance(o, jax.Array) and not isinstance(o, jax.core.Tracer) and o.committed:
            return jax.device_put(n, o.sharding)
        return n

    return jax.tree.map(one, new, old)


def _no_mask_state(fn: str) -> ValueError:
    return ValueError(
        f"{fn}: opt_state holds no MaskedState or SignInState; build the optimizer with "
        "optim.masked_updates() or sign_in()"
    )


def get_mask(opt_state: Any) -> PyTree:
    """The mask of the first mask-holding state (:class:`MaskedState`, ``SignInState``) inside
    ``opt_state`` (also nested in ``optax.chain``, ``MultiSteps``, ...)."""
    found = _mask_fields(opt_state)
    if not found:
        raise _no_mask_state("get_mask")
    return found[0][1]


def set_mask(opt_state: Any, mask: PyTree, tx: optax.GradientTransformation | None = None
             ) -> Any:
    """Put ``mask`` into every mask-holding state inside ``opt_state``. Pure; the result has the
    same structure, dtypes and shardings, so the train step does not recompile.

    With ``tx`` (the transform that made ``opt_state``), the params-shaped optimizer state of
    every entry the new mask prunes is zeroed now, through ``optax.tree_utils.tree_map_params``;
    without it :func:`masked_updates` zeroes it at its next update (the same training).
    ``SignInState``: entries that are not kept restart at ``(sqrt(beta), 0)`` with zero state.
    The caller also zeroes pruned params (``masks.apply_mask``)."""
    found = _mask_fields(opt_state)
    if not found:
        raise _no_mask_state("set_mask")
    for _, old in found:
        check_same_structure(old, mask, "current mask", "new mask")
    new = _bool_like(mask, found[0][1])
    if tx is not None:
        opt_state = otu.tree_map_params(tx, _zero_where_pruned_leaf, opt_state, new)
    # Type-specific surgery on the *old* state (it needs the old mask), then the new mask field.
    is_node = lambda n: type(n).__name__ in _MASK_STATES and hasattr(n, "mask")
    opt_state = jax.tree.map(
        lambda n: _MASK_STATES[type(n).__name__](n, new) if is_node(n) else n,
        opt_state, is_leaf=is_node,
    )
    return otu.tree_set(opt_state, _is_mask_field, mask=new)


register_mask_state(MaskedState, lambda state, new: state)


def _ensure_registered() -> None:
    # SignInState registers itself when signticket.sign_in is imported; importing it here,
    # lazily, keeps optim importable on its own while states built by sign_in are always found.
    if "SignInState" not in _MASK_STATES:
        import signticket.sign_in  # noqa: F401


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """PyTorch ``torch.optim.SGD`` (coupled decay): ``g += λθ; b = μb + g; θ -= η b``."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
    )


def adam(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """PyTorch ``torch.optim.Adam`` (coupled L2 decay): ``g += λθ`` then Adam."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    )


OPTIMIZERS = {"sgd": sgd, "adam": adam}


def make_optimizer(
    name: str, learning_rate: optax.ScalarOrSchedule, **kwargs: Any
) -> optax.GradientTransformation:
    """``"sgd"`` or ``"adam"`` by name, with the keyword arguments of :func:`sgd` / :func:`adam`."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate, **kwargs)


# -- Sign-In (signticket/sign_in.py), re-exported lazily -------------------------------------------

_SIGN_IN_NAMES = ("MW", "SignInState", "balanced_init", "sign_in", "reset_scaling",
                  "sign_in_states", "reparameterized", "preconditioner", "relative_balance")


def __getattr__(name: str):
    # PEP 562: ``optim.sign_in`` etc. without importing sign_in at module import (sign_in
    # imports this module for the mask registry).
    if name in _SIGN_IN_NAMES:
        from signticket import sign_in as _sign_in

        return getattr(_sign_in, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
