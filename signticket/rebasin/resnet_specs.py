"""Specs for ResNets: CIFAR ResNet-20/18 (BasicBlock) and ImageNet ResNet-50 (Bottleneck).

Two kinds of permutation:

* ``"{block}/inner"`` (BasicBlock) or ``"{block}/inner1"``, ``"{block}/inner2"`` (Bottleneck):
  the block's hidden channels (conv1 / bn1 outputs, conv2 input, ...), private to one block.
* ``"residual{j}"``: the residual stream. The skip connection adds the block input to its output
  channel by channel, so one permutation is shared by the stem (``stem_conv`` output,
  ``stem_bn``) and every block of a stage: each block's last conv output and BN, its first
  conv's input, the downsampling ``shortcut_conv`` output and ``shortcut_bn``, and the ``head``
  input. A new stream (``j + 1``) starts exactly at a block with a projection shortcut, whose
  ``shortcut_conv`` input is the old stream.
"""

from __future__ import annotations

import dataclasses
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

_BLOCK = re.compile(r"stage(\d+)_block(\d+)")


def _conv(shape: tuple[int, ...], p_in: str | None, p_out: str | None) -> Axes:
    return (None,) * (len(shape) - 2) + (p_in, p_out)


def resnet_spec(variables: Mapping[str, PyTree]) -> PermutationSpec:
    """Spec of a ResNet with modules ``stem_conv``, ``stem_bn``, ``stage{s}_block{b}`` and
    ``head`` (BasicBlocks ``conv1, bn1, conv2, bn2``; Bottlenecks add ``conv3, bn3``; optional
    ``shortcut_conv, shortcut_bn``), as built by :mod:`signticket.models`."""
    shapes = collection_leaves(variables)
    modules = {path[0] for path in shapes}
    if "stem_conv" not in modules or HEAD_NAME not in modules:
        raise ValueError(f"resnet spec: expected stem_conv and head modules, got {sorted(modules)}")
    blocks = sorted(
        (int(m.group(1)), int(m.group(2)), name)
        for name in modules
        if (m := _BLOCK.fullmatch(name))
    )
    block_modules = {
        name: {p[1] for p in shapes if p[0] == name and len(p) == 3} for *_, name in blocks
    }

    # Walk the blocks in forward order, tracking which residual stream enters and leaves each.
    stream_in: dict[str, str] = {}
    stream_out: dict[str, str] = {}
    stream, j = "residual0", 0
    for *_, name in blocks:
        stream_in[name] = stream
        if "shortcut_conv" in block_modules[name]:
            j += 1
            stream = f"residual{j}"
        stream_out[name] = stream
    last = stream

    def inner(block: str, k: int) -> str:
        bottleneck = "conv3" in block_modules[block]
        return f"{block}/inner{k}" if bottleneck else f"{block}/inner"

    # Per block: conv sub-module -> (input, output) permutation; norm sub-module -> permutation.
    convs: dict[str, dict[str, tuple[str, str]]] = {}
    norms: dict[str, dict[str, str]] = {}
    for *_, name in blocks:
        r_in, r_out, i1 = stream_in[name], stream_out[name], inner(name, 1)
        if "conv3" in block_modules[name]:
            i2 = inner(name, 2)
            convs[name] = {"conv1": (r_in, i1), "conv2": (i1, i2), "conv3": (i2, r_out)}
            norms[name] = {"bn1": i1, "bn2": i2, "bn3": r_out}
        else:
            convs[name] = {"conv1": (r_in, i1), "conv2": (i1, r_out)}
            norms[name] = {"bn1": i1, "bn2": r_out}
        convs[name]["shortcut_conv"] = (r_in, r_out)
        norms[name]["shortcut_bn"] = r_out

    def rule(path: KeyPath, shape: tuple[int, ...]) -> Axes:
        if path == ("stem_conv", "kernel"):
            return _conv(shape, None, "residual0")
        if len(path) == 2 and path[0] == "stem_bn":
            return ("residual0",)
        if path == (HEAD_NAME, "kernel"):
            return (last, None)
        if path == (HEAD_NAME, "bias"):
            return (None,)
        if len(path) == 3 and path[0] in convs:
            block, sub, leaf = path
            if sub in convs[block] and leaf == "kernel":
                return _conv(shape, *convs[block][sub])
            if sub in norms[block] and leaf in ("scale", "bias", "mean", "var"):
                return (norms[block][sub],)
        raise ValueError(f"resnet spec: no permutation rule for leaf {fmt(path)!r}")

    sites: dict[str, list[ActivationSite]] = {
        "residual0": [ActivationSite(("stem_bn",), relu=True)]
    }
    for *_, name in blocks:
        sites[inner(name, 1)] = [ActivationSite((name, "bn1"), relu=True)]
        if "conv3" in block_modules[name]:
            sites[inner(name, 2)] = [ActivationSite((name, "bn2"), relu=True)]
        # A block's output (after its final ReLU) is the residual stream it writes.
        sites.setdefault(stream_out[name], []).append(ActivationSite((name,), relu=False))
    return spec_from_variables(variables, rule, sites)


#: Residual-stream site choices for :func:`with_stream_sites`.
STREAM_SITES = ("all", "sparse_rebasin", "last")


def with_stream_sites(spec: PermutationSpec, sites: str) -> PermutationSpec:
    """``spec`` with each residual stream observed at the sites ``sites`` names.

    ``"all"``: unchanged (the stem and every block output of the stream, correlations summed).
    ``"sparse_rebasin"``: one site per stream, as ``act_matching_resnet20.py`` (lines 136-174,
    ``kk = [3, 6, 8]`` over ``[stem, *blocks]``): the output of the last block of every stage
    but the final one, and of the *second-to-last* block of the final stage (index 8 of 10 on
    ResNet-20 is ``layer3[1]``; reproduced as the official code has it). Block-internal
    permutations keep their one site (``relu(bn1)``), as there.
    ``"last"``: each stream at its last site in forward order, as sparse-rebasin's ImageNet
    ResNet-50 matcher (``resnet50_src/resnet50_w2_matching.py`` ``get_permk``: ``kk = 0, 3,
    7, 13, 16`` over ``[stem, *blocks]``): the stem for a stream no block writes (ResNet-50's
    first stage starts with a projection shortcut), else the output of its stage's last
    block, the final stage included. Block-internal permutations keep their sites. A spec
    without residual streams (MLP, VGG: one site per layer already) is returned unchanged.
    """
    if sites not in STREAM_SITES:
        raise ValueError(f"unknown stream sites {sites!r}; available: {', '.join(STREAM_SITES)}")
    if sites == "all":
        return spec
    streams = sorted((p for p in spec.activations if p.startswith("residual")),
                     key=lambda p: int(p[len("residual"):]))
    if not streams:
        return spec
    acts = dict(spec.activations)
    if sites == "last":
        # Sites are listed in forward order (the stem, then blocks by stage and index).
        return dataclasses.replace(spec, activations={
            **acts, **{p: (acts[p][-1],) for p in streams}})
    for j, p in enumerate(streams):
        blocks = [site for site in acts[p] if _BLOCK.fullmatch(site.module[0])]
        pick = -2 if j == len(streams) - 1 else -1
        if len(blocks) < -pick:
            raise ValueError(f"with_stream_sites: stream {p!r} has {len(blocks)} block outputs")
        acts[p] = (blocks[pick],)
    return dataclasses.replace(spec, activations=acts)
