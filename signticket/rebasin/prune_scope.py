"""Which leaves the permuted-mask pipeline prunes: leaf predicates naming each reference's set.

sparse-rebasin (``pruning.py`` lines 27-36) prunes the weight of every ``Conv2d`` and ``Linear``
-- the classifier included -- except, in ResNets, modules named ``shortcut`` (the projection
convs stay dense). Its sparsity (``utils.calculate_overall_sparsity_from_pth``) counts exactly
the masked layers. Biases and norm parameters are never pruned.
"""

from __future__ import annotations

from typing import Any

from signticket.tree import LeafPredicate, is_kernel, is_prunable


def is_shortcut(path: str, leaf: Any = None) -> bool:
    """Leaves of a projection shortcut (a module whose name contains ``shortcut``)."""
    return any("shortcut" in part for part in path.split("/")[:-1])


def sparse_rebasin_prunable(path: str, leaf: Any = None) -> bool:
    """Every conv / dense kernel (head included) except projection shortcuts."""
    return is_kernel(path) and not is_shortcut(path)


#: ``config.imp.prune_scope`` -> predicate. ``"sparse_rebasin"`` is the official set;
#: ``"no_head"`` is signticket's library default (every kernel but the classifier).
PRUNE_SCOPES: dict[str, LeafPredicate] = {
    "sparse_rebasin": sparse_rebasin_prunable,
    "no_head": is_prunable,
}


def prune_scope(name: str) -> LeafPredicate:
    """The predicate registered as ``name`` in :data:`PRUNE_SCOPES`."""
    if name not in PRUNE_SCOPES:
        raise ValueError(f"unknown prune scope {name!r}; available: {', '.join(PRUNE_SCOPES)}")
    return PRUNE_SCOPES[name]
