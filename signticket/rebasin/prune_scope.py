"""Which leaves the permuted-mask pipeline prunes: leaf predicates naming each reference's set.

sparse-rebasin (``pruning.py`` lines 27-36) prunes the weight of every ``Conv2d`` and ``Linear``
-- the classifier included -- except, in ResNets, modules named ``shortcut`` (the projection
convs stay dense). Its sparsity (``utils.calculate_overall_sparsity_from_pth``) counts exactly
the masked layers. Biases and norm parameters are never pruned.

The predicates live here (core: they import only :mod:`signticket.tree`); their names are
registered in the one registry of pruning scopes, :data:`signticket.lottery.PRUNING_SCOPES`,
which both IMP callers (``lottery.imp`` and ``rebasin.procedure.imp_masks``) resolve through.
"""

from __future__ import annotations

from typing import Any

from signticket.tree import LeafPredicate, is_kernel


def is_shortcut(path: str, leaf: Any = None) -> bool:
    """Leaves of a projection shortcut (a module whose name contains ``shortcut``)."""
    return any("shortcut" in part for part in path.split("/")[:-1])


def sparse_rebasin_prunable(path: str, leaf: Any = None) -> bool:
    """Every conv / dense kernel (head included) except projection shortcuts."""
    return is_kernel(path) and not is_shortcut(path)


def prune_scope(name: str) -> LeafPredicate:
    """The predicate registered as ``name`` (``config.imp.prune_scope``) in the one registry of
    pruning scopes, :data:`signticket.lottery.PRUNING_SCOPES` (``"sparse_rebasin"``: the
    official set; ``"no_head"``: signticket's library default, every kernel but the classifier).
    Imports the lottery module (the training stack) on first use."""
    from signticket.lottery import pruning_scope

    return pruning_scope(name)
