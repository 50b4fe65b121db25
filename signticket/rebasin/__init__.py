"""Permutation symmetry of networks: specs, applying / inverting / composing permutations,
weight matching and activation matching (Git Re-Basin), as pure functions on Flax pytrees.

The permuted-lottery-ticket pipeline (dense runs, IMP, matching, sparse runs) lives in
:mod:`signticket.rebasin.procedure`, imported explicitly because it pulls in the training stack.
"""

from signticket.rebasin.activation_matching import activation_matching, activation_stats
from signticket.rebasin.apply import apply_permutation, permute_leaf
from signticket.rebasin.chain_specs import chain_spec, conv_chain_spec, mlp_spec
from signticket.rebasin.perms import check_perms, compose, identity_perms, invert, random_perms
from signticket.rebasin.registry import register_spec, spec_for, spec_names
from signticket.rebasin.resnet_specs import resnet_spec
from signticket.rebasin.spec import (
    ActivationSite,
    Axes,
    KeyPath,
    Perms,
    PermutationSpec,
    key_paths,
    spec_from_variables,
)
from signticket.rebasin.weight_matching import check_matchable, weight_matching

__all__ = [
    "ActivationSite",
    "Axes",
    "KeyPath",
    "Perms",
    "PermutationSpec",
    "activation_matching",
    "activation_stats",
    "apply_permutation",
    "chain_spec",
    "check_matchable",
    "check_perms",
    "compose",
    "conv_chain_spec",
    "identity_perms",
    "invert",
    "key_paths",
    "mlp_spec",
    "permute_leaf",
    "random_perms",
    "register_spec",
    "resnet_spec",
    "spec_for",
    "spec_from_variables",
    "spec_names",
    "weight_matching",
]
