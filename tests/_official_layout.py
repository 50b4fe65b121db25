"""What the AWS conformance tests share: PyTorch <-> Flax weight layouts and the official
20 % pruning round's per-layer fingerprint (fixtures from the official ``utils/prune.py``)."""

from __future__ import annotations

import hashlib

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


def set_path(tree: dict, path: str, value) -> None:
    """``tree["a"]["b"]["kernel"] = value`` for ``path = "a/b/kernel"``."""
    *mods, leaf = path.split("/")
    for m in mods:
        tree = tree.setdefault(m, {})
    tree[leaf] = value


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
