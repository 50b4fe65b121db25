"""Specs for plain feed-forward chains: MLP (``fc{i}``), the small convnet and VGG (``conv{i}``).

Layer ``i``'s output units carry permutation ``"<layer>"`` (e.g. ``"fc1"``): the layer's kernel
output axis, its bias and its ``bn{i}`` (scale, bias, mean, var); the next layer's kernel input
axis; the ``head``'s input axis after the last layer (the convnets global-average-pool first, so
channels stay channels). Raw inputs and the logits are never permuted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from signticket.rebasin.spec import (
    ActivationSite,
    Axes,
    KeyPath,
    PermutationSpec,
    collection_leaves,
    fmt,
    spec_from_variables,
)
from signticket.tree import HEAD_NAME, PyTree


def _layer_index(module: str, prefix: str) -> int | None:
    m = re.fullmatch(rf"{prefix}(\d+)", module)
    return int(m.group(1)) if m else None


def chain_spec(variables: Mapping[str, PyTree], layer_prefix: str) -> PermutationSpec:
    """Spec of a chain of layers ``{layer_prefix}{i}`` (optional norms ``bn{i}``) -> ``head``.

    ``variables`` is ``{"params": ..., "batch_stats": ...}`` (or just params; shapes suffice).
    Every hidden unit is observable for activation matching as ``relu(bn{i}(...))`` or, without
    BN, ``relu({layer}{i}(...))``.
    """
    shapes = collection_leaves(variables)
    modules = {path[0] for path in shapes}
    layers = sorted(
        i for m in modules if (i := _layer_index(m, layer_prefix)) is not None
    )
    if not layers:
        raise ValueError(f"chain spec: no layers named {layer_prefix}<i> in {sorted(modules)}")
    if layers != list(range(len(layers))):
        raise ValueError(
            f"chain spec: layers {layer_prefix}<i> must be numbered 0..n-1, got {layers}"
        )
    name = {i: f"{layer_prefix}{i}" for i in layers}

    def rule(path: KeyPath, shape: tuple[int, ...]) -> Axes:
        module, leaf = path[0], path[-1]
        if len(path) == 2 and (i := _layer_index(module, layer_prefix)) is not None:
            if leaf == "kernel":
                # Dense (in, out) or conv HWIO: only the last two axes carry units.
                return (None,) * (len(shape) - 2) + (name.get(i - 1), name[i])
            if leaf == "bias":
                return (name[i],)
        if len(path) == 2 and (i := _layer_index(module, "bn")) is not None and i in name:
            return (name[i],)
        if path == (HEAD_NAME, "kernel"):
            return (name[layers[-1]], None)
        if path == (HEAD_NAME, "bias"):
            return (None,)
        raise ValueError(
            f"chain spec ({layer_prefix}<i>): no permutation rule for leaf {fmt(path)!r}"
        )

    sites = {
        name[i]: (ActivationSite((f"bn{i}",) if f"bn{i}" in modules else (name[i],), relu=True),)
        for i in layers
    }
    return spec_from_variables(variables, rule, sites)


def mlp_spec(variables: Mapping[str, PyTree]) -> PermutationSpec:
    """MLP ``fc0..fc{n-1}`` (+ ``bn{i}``) -> ``head``; the first layer's input (pixels) is fixed."""
    return chain_spec(variables, "fc")


def conv_chain_spec(variables: Mapping[str, PyTree]) -> PermutationSpec:
    """Small convnet / VGG: ``conv{i}`` (+ ``bn{i}``), pools, global average pool -> ``head``."""
    return chain_spec(variables, "conv")
