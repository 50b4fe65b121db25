"""Optax transforms: masked updates, and the papers' optimizers.

``masked(inner)`` keeps pruned weights exactly zero. Its mask lives in the optimizer state as an
array, so a new mask between pruning rounds is a new *value* (``set_mask``), never a recompile.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from signticket.masks import full_mask
from signticket.tree import PyTree, check_same_structure


class MaskedState(NamedTuple):
    """State of :func:`masked`: the bool mask and the inner transform's state."""

    mask: PyTree
    inner_state: optax.OptState


def _zero_where_pruned(tree: PyTree, mask: PyTree) -> PyTree:
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), tree, mask)


def masked(
    inner: optax.GradientTransformation, mask: PyTree | None = None
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` so pruned entries get exactly zero updates.

    ``u = M ⊙ inner(M ⊙ g)``: gradients are masked before ``inner`` (momentum of pruned entries
    stays zero) and its output after it (weight decay and momentum cannot leak back). ``mask=None``
    starts dense (all True), so dense and sparse phases share one compiled step.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> MaskedState:
        m = full_mask(params) if mask is None else mask
        check_same_structure(params, m, "params", "mask")
        m = jax.tree.map(lambda x: jnp.asarray(x, bool), m)
        return MaskedState(mask=m, inner_state=inner.init(params))

    def update_fn(updates, state: MaskedState, params=None, **extra_args):
        updates = _zero_where_pruned(updates, state.mask)
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        updates = _zero_where_pruned(updates, state.mask)
        return updates, MaskedState(state.mask, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _reset_pruned(inner_state: Any, mask: PyTree) -> Any:
    """Zero every params-shaped subtree of ``inner_state`` (momentum, Adam moments) where pruned."""
    mask_def = jax.tree.structure(mask)
    shapes = [jnp.shape(m) for m in jax.tree.leaves(mask)]

    def params_shaped(node) -> bool:
        try:
            if jax.tree.structure(node) != mask_def:
                return False
        except Exception:
            return False
        return [jnp.shape(x) for x in jax.tree.leaves(node)] == shapes

    def reset(node):
        return _zero_where_pruned(node, mask) if params_shaped(node) else node

    return jax.tree.map(reset, inner_state, is_leaf=params_shaped)


def set_mask(opt_state: Any, mask: PyTree) -> Any:
    """Put ``mask`` into every :class:`MaskedState` inside ``opt_state`` (also when nested in
    ``optax.chain``, ``MultiSteps``, ...) and zero the optimizer state of newly pruned entries.
    Pure; the result has the same structure and dtypes, so the train step does not recompile."""
    found = []

    def swap(node):
        if isinstance(node, MaskedState):
            check_same_structure(node.mask, mask, "current mask", "new mask")
            new = jax.tree.map(lambda x: jnp.asarray(x, bool), mask)
            found.append(True)
            return MaskedState(new, _reset_pruned(node.inner_state, new))
        return node

    out = jax.tree.map(swap, opt_state, is_leaf=lambda n: isinstance(n, MaskedState))
    if not found:
        raise ValueError(
            "set_mask: opt_state holds no MaskedState; build the optimizer with masked()"
        )
    return out


def get_mask(opt_state: Any) -> PyTree:
    """The mask held by the (first) :class:`MaskedState` inside ``opt_state``."""
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, MaskedState))
    for node in leaves:
        if isinstance(node, MaskedState):
            return node.mask
    raise ValueError("get_mask: opt_state holds no MaskedState; build the optimizer with masked()")


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


# -- Sign-In (signticket/sign_in.py) --------------------------------------------------------------
# Re-exported here. set_mask / get_mask are rebound to versions that handle both MaskedState and
# SignInState (MaskedState exactly as above), so RiGL and pruning rounds work with either.
from signticket import sign_in as _sign_in  # noqa: E402

MW, SignInState, balanced_init = _sign_in.MW, _sign_in.SignInState, _sign_in.balanced_init
sign_in, reset_scaling = _sign_in.sign_in, _sign_in.reset_scaling
sign_in_states, reparameterized = _sign_in.sign_in_states, _sign_in.reparameterized
set_mask, get_mask = _sign_in.set_mask, _sign_in.get_mask  # noqa: F811 - deliberate rebinding
