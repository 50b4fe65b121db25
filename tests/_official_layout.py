"""What the AWS conformance tests share: the seeded weight rule both sides load, PyTorch <->
Flax weight layouts and the official 20 % pruning round's per-layer fingerprint (fixtures from
the official ``utils/prune.py``)."""

from __future__ import annotations

import hashlib
import math
import zlib

import jax.numpy as jnp
import numpy as np

from signticket.tree import is_prunable, named_leaves


def to_flax(x: np.ndarray) -> np.ndarray:
    """torch OIHW conv / (O, I, 1) conv1d / (out, in) linear -> HWIO / (1, I, O) / (in, out)."""
    if x.ndim >= 3:
        return x.transpose((*range(2, x.ndim), 1, 0))
    return x.T if x.ndim == 2 else x


def to_torch(x: np.ndarray) -> np.ndarray:
    if x.ndim >= 3:  # (*kernel, I, O) -> (O, I, *kernel)
        return x.transpose((x.ndim - 1, x.ndim - 2, *range(x.ndim - 2)))
    return x.T if x.ndim == 2 else x


def seeded_value(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The shared weight rule (torch layout): RandomState(crc32(torch state-dict name))."""
    rs = np.random.RandomState(zlib.crc32(name.encode()))
    leaf = name.split(".")[-1]
    if leaf == "running_var":
        return rs.uniform(0.5, 1.5, shape)
    if leaf == "running_mean":
        return 0.1 * rs.standard_normal(shape)
    if len(shape) == 1 and leaf == "weight":  # BN / LN weight
        return rs.uniform(0.5, 1.0, shape)
    if len(shape) == 1:
        return 0.1 * rs.standard_normal(shape)
    return rs.standard_normal(shape) / math.sqrt(int(np.prod(shape[1:])))


def set_path(tree: dict, path: str, value) -> None:
    """``tree["a"]["b"]["kernel"] = value`` for ``path = "a/b/kernel"``."""
    *mods, leaf = path.split("/")
    for m in mods:
        tree = tree.setdefault(m, {})
    tree[leaf] = value


def official_variables(entries) -> dict:
    """Our ``{"params", "batch_stats"}`` holding the seeded weights the official model was
    given: one fixture entry ``(torch name, collection, flax path, torch shape)`` per tensor."""
    variables: dict = {"params": {}, "batch_stats": {}}
    for name, coll, path, shape in entries:
        value = to_flax(seeded_value(name, tuple(shape)).astype(np.float32))
        set_path(variables[coll], path, jnp.asarray(value))
    return variables


def assert_official_prune(mask, official: dict) -> None:
    """``mask`` keeps, layer by layer, exactly the weights the official round kept: the same
    masked layers, and per layer the same count and the same positions (a hash of the mask in
    torch layout)."""
    ours = {}
    for path, m in named_leaves(mask):
        if is_prunable(path):
            m = to_torch(np.asarray(m, bool))
            ours[path] = [int(m.sum()), int(m.size),
                          hashlib.sha1(np.packbits(m.ravel()).tobytes()).hexdigest()]
    assert set(ours) == {p for p, *_ in official["layers"]}
    for path, kept, total, digest in official["layers"]:
        assert ours[path] == [kept, total, digest], path
    assert sum(v[0] for v in ours.values()) == official["kept"] == int(official["total"] * 0.8)
