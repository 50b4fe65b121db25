"""Conformance with the official sparse-rebasin code (calgaryml/sparse-rebasin, ``models.py``,
``pruning.py``): numbers computed once from it (tests/fixtures/permuted_make_fixtures.py) pin our
ports of its ResNet-20 (every width the paper uses) and VGG11_nofc -- state-dict shapes,
parameter counts, logits on identical seeded weights -- and its pruned layer set and one global
20 % magnitude round on identical weights. No torch needed here."""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signticket import masks, models
from signticket.rebasin.prune_scope import sparse_rebasin_prunable
from signticket.tree import named_leaves

FIXTURES = Path(__file__).parent / "fixtures"


def _load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


RESNET = _load("permuted_resnet20.json")
VGG = _load("permuted_vgg11_nofc.json")


# -- the same deterministic weights as the fixture generator (keyed by the torch name) ----------


def seeded_value(name: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var" or (leaf == "weight" and len(shape) == 1):
        v = rng.uniform(0.5, 1.5, shape)
    elif len(shape) >= 2:
        v = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    else:
        v = 0.1 * rng.standard_normal(shape)
    return v.astype(np.float32)


def seeded_input(shape) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
    return x.transpose(0, 2, 3, 1)  # NCHW -> NHWC


# -- torch state-dict names -> our (collection, key path) -----------------------------------------

_BN_LEAF = {"weight": ("params", "scale"), "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def resnet_path(name: str) -> tuple[str, tuple[str, ...]]:
    """``layer2.0.shortcut.1.running_var`` -> ``("batch_stats", ("stage1_block0",
    "shortcut_bn", "var"))``."""
    *mods, leaf = name.split(".")
    if mods == ["linear"]:
        return "params", ("head", {"weight": "kernel", "bias": "bias"}[leaf])
    if mods in (["conv1"], ["bn1"]):
        mods = ["stem_" + ("conv" if mods[0] == "conv1" else "bn")]
        prefix: tuple[str, ...] = ()
    else:
        stage, block, *mods = mods
        prefix = (f"stage{int(stage[-1]) - 1}_block{block}",)
        mods = {("shortcut", "0"): ["shortcut_conv"], ("shortcut", "1"): ["shortcut_bn"]}.get(
            tuple(mods), mods)
    (module,) = mods
    if "bn" in module:
        coll, ours = _BN_LEAF[leaf]
        return coll, (*prefix, module, ours)
    return "params", (*prefix, module, "kernel")


def vgg_path(name: str, conv_index: dict[int, int]) -> tuple[str, tuple[str, ...]]:
    """``features.3.weight`` -> ``("params", ("conv1", "kernel"))`` (the 2nd conv)."""
    *mods, leaf = name.split(".")
    module = "head" if mods == ["classifier"] else f"conv{conv_index[int(mods[1])]}"
    return "params", (module, "kernel" if leaf == "weight" else "bias")


def to_ours(value: np.ndarray) -> np.ndarray:
    """Torch layout -> ours: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


def to_torch(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    return value.T if value.ndim == 2 else value


def vgg_conv_index(entries) -> dict[int, int]:
    idx = sorted({int(n.split(".")[1]) for n, _ in entries if n.startswith("features.")})
    return {j: i for i, j in enumerate(idx)}


def mapping(kind: str, entries) -> dict[str, tuple[str, tuple[str, ...]]]:
    if kind == "resnet":
        return {n: resnet_path(n) for n, _ in entries}
    index = vgg_conv_index(entries)
    return {n: vgg_path(n, index) for n, _ in entries}


def build(kind: str, key: str):
    if kind == "resnet":
        dataset, w = re.fullmatch(r"(cifar\d+)_w(\d+)", key).groups()
        return models.get("resnet20_rebasin", 10 if dataset == "cifar10" else 100, width=int(w))
    return models.get("vgg11_nofc", 10)


def our_shapes(model) -> dict[tuple[str, tuple[str, ...]], tuple[int, ...]]:
    v = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0),
                                                     (1, 32, 32, 3)))
    return {(c, tuple(p.split("/"))): tuple(x.shape)
            for c in v for p, x in named_leaves(v[c])}


def seeded_variables(kind: str, entries) -> dict:
    out: dict = {}
    for name, (coll, path) in mapping(kind, entries).items():
        shape = dict((n, tuple(s)) for n, s in entries)[name]
        node = out.setdefault(coll, {})
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(to_ours(seeded_value(name, shape)))
    return out


CASES = [("resnet", k) for k in RESNET["models"]] + [("vgg", k) for k in VGG["models"]]


def _fixture(kind: str, key: str) -> dict:
    return (RESNET if kind == "resnet" else VGG)["models"][key]


@pytest.mark.parametrize("kind,key", CASES)
def test_state_dict_shapes_and_parameter_count_equal_the_official_model(kind, key):
    fx = _fixture(kind, key)
    model = build(kind, key)
    ours = our_shapes(model)
    theirs = {mapping(kind, fx["state_dict"])[n]: tuple(to_ours(np.empty(s)).shape)
              for n, s in fx["state_dict"]}
    # A bijection: every official tensor has exactly one counterpart of the same shape.
    assert theirs == ours
    n_params = sum(int(np.prod(s)) for (c, _), s in ours.items() if c == "params")
    assert n_params == fx["num_parameters"]


@pytest.mark.parametrize("kind,key", [c for c in CASES if "logits_eval" in _fixture(*c)])
def test_logits_on_identical_weights_equal_the_official_model(kind, key):
    fx = _fixture(kind, key)
    model = build(kind, key)
    v = seeded_variables(kind, fx["state_dict"])
    x = jnp.asarray(seeded_input(fx["input"]["shape"]))
    logits = model.apply(v, x, train=False)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(fx["logits_eval"]),
                               atol=1e-4, rtol=1e-4)
    # Not vacuous: the logits separate the examples.
    assert np.ptp(np.asarray(fx["logits_eval"])) > 0.1
    if "logits_train" in fx:  # BatchNorm on batch statistics (biased variance, eps 1e-5)
        train_logits, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
        np.testing.assert_allclose(np.asarray(train_logits), np.asarray(fx["logits_train"]),
                                   atol=1e-4, rtol=1e-4)


def _kernel_owner(kind: str, entries) -> dict[tuple[str, ...], str]:
    """Our kernel path -> the official module name."""
    return {path: name.rsplit(".", 1)[0] for name, (_, path) in mapping(kind, entries).items()
            if name.endswith(".weight") and len(dict(entries)[name]) >= 2}


@pytest.mark.parametrize("kind,key", CASES)
def test_pruned_layer_set_equals_the_official_one(kind, key):
    fx = _fixture(kind, key)
    owner = _kernel_owner(kind, fx["state_dict"])
    model = build(kind, key)
    ours = {owner[path] for coll, path in our_shapes(model)
            if coll == "params" and sparse_rebasin_prunable("/".join(path))}
    assert ours == set(fx["pruned_layers"])
    # The head is pruned; projection shortcuts are not (ResNet).
    assert ("linear" if kind == "resnet" else "classifier") in ours
    assert not any("shortcut" in n for n in ours)


@pytest.mark.parametrize("kind,key", [c for c in CASES if "prune_round" in _fixture(*c)])
def test_one_global_magnitude_round_prunes_the_official_weights(kind, key):
    fx = _fixture(kind, key)
    fround = fx["prune_round"]
    params = seeded_variables(kind, fx["state_dict"])["params"]
    mask = masks.magnitude_prune(params, masks.full_mask(params), fround["amount"], "global",
                                 prunable=sparse_rebasin_prunable, keep_dense=())
    owner = _kernel_owner(kind, fx["state_dict"])
    got = {}
    for path, m in named_leaves(mask):
        m = np.asarray(m)
        if not sparse_rebasin_prunable(path):
            assert m.all(), f"{path} is outside the pruned set but lost weights"
            continue
        t = to_torch(m)
        got[owner[tuple(path.split("/"))]] = {
            "pruned": int((~t).sum()), "size": int(t.size),
            "mask_sha256": hashlib.sha256(np.packbits(t.ravel()).tobytes()).hexdigest()}
    want = {d["name"]: {k: d[k] for k in ("pruned", "size", "mask_sha256")}
            for d in fround["layers"]}
    assert {n: g["pruned"] for n, g in got.items()} == {n: w["pruned"] for n, w in want.items()}
    assert got == want  # the very same weights, layer by layer
    pruned = sum(g["pruned"] for g in got.values())
    assert pruned == fround["pruned"]
    # Sparsity counts the masked layers only: 20 % of them, not of every parameter.
    assert masks.sparsity(mask, sparse_rebasin_prunable, keep_dense=()).overall == pytest.approx(
        pruned / fround["size"])
    assert pruned == round(0.2 * fround["size"])


def test_initialization_follows_the_official_models():
    """ResNet-20: ``_weights_init`` draws conv and Linear weights Kaiming-normal (fan-in, gain
    sqrt 2, models.py lines 72-75) and leaves the Linear bias at PyTorch's default; VGG11_nofc
    under ``init_weights: False`` keeps PyTorch's defaults: U(+-1/sqrt(fan_in)) everywhere."""
    key = jax.random.PRNGKey(0)
    r = models.init_variables(models.get("resnet20_rebasin", 10, width=4), key, (1, 32, 32, 3))
    p = r["params"]
    k = np.asarray(p["stage2_block1"]["conv2"]["kernel"])  # 3x3x256x256
    np.testing.assert_allclose(k.std(), np.sqrt(2 / (9 * 256)), rtol=0.02)
    sc = np.asarray(p["stage1_block0"]["shortcut_conv"]["kernel"])
    assert sc.shape == (3, 3, 64, 128)
    np.testing.assert_allclose(sc.std(), np.sqrt(2 / (9 * 64)), rtol=0.05)
    bias, bound = np.asarray(p["head"]["bias"]), 1 / np.sqrt(256)
    assert np.all(np.abs(bias) <= bound) and np.ptp(bias) > bound  # spread, not zeros

    v = models.init_variables(models.get("vgg11_nofc", 10), key, (1, 32, 32, 3))["params"]
    for name, fan_in in (("conv5", 9 * 512), ("head", 512)):
        kernel, b = np.asarray(v[name]["kernel"]), np.asarray(v[name]["bias"])
        bound = 1 / np.sqrt(fan_in)
        top = np.abs(kernel).max()
        assert 0.99 * bound < top <= bound * (1 + 1e-6)  # float32 rounding at the bound
        np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.05)
        assert np.abs(b).max() <= bound * (1 + 1e-6) and np.ptp(b) > bound


def test_resnet50_wide_has_the_official_shapes_and_parameter_count():
    """sparse-rebasin's ImageNet model, ``resnet50_src/resnet_torchvision.py::resnet50_wide``:
    271,278,696 parameters with 1000 classes (counted with the official code, torch 2.13), a
    128-channel 7x7 stem, ``layer1.0`` = conv1 (256, 128, 1, 1), conv2 (256, 256, 3, 3), conv3
    (512, 256, 1, 1), downsample (512, 128, 1, 1), and a 4096 -> 1000 ``fc``. Shapes only
    (``eval_shape``): the model is 1 GB of float32."""
    import jax

    from signticket import models

    model = models.get("resnet50_wide", 1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jax.numpy.zeros((1, 64, 64, 3))))["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 271_278_696
    block = shapes["stage0_block0"]
    # flax HWIO = torch OIHW transposed
    assert shapes["stem_conv"]["kernel"].shape == (7, 7, 3, 128)
    assert block["conv1"]["kernel"].shape == (1, 1, 128, 256)
    assert block["conv2"]["kernel"].shape == (3, 3, 256, 256)
    assert block["conv3"]["kernel"].shape == (1, 1, 256, 512)
    assert block["shortcut_conv"]["kernel"].shape == (1, 1, 128, 512)
    assert shapes["head"]["kernel"].shape == (4096, 1000)
