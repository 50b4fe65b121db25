"""Conformance with the official AWS code (JungHunOh/AWS_ICLR2025), from numbers it computed.

``tests/fixtures/aws_conformance.json`` was computed once by running the official
``models/utils.py::get_model`` (torch CPU; torchvision's ResNet-50) and ``utils/prune.py::prune``
on a seeded weight set that ``seeded_value`` regenerates with numpy. Per model the
official code defines and we have (CIFAR-100 ResNet-50, CIFAR-100 MobileNetV2, ImageNet
ResNet-50): weight shapes and parameter count, eval- and train-mode logits on identical weights
and input, the mask after one global 20 % magnitude round (per-layer counts and a hash of every
layer's mask, over the official choice of layers), and the official init's per-layer statistics
against the formula our init follows. No torch needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _official_layout import assert_official_prune, official_variables, to_flax

from signticket import lottery, models
from signticket.masks import full_mask
from signticket.tree import named_leaves

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "aws_conformance.json").read_text())
MODELS = {"resnet50_cifar": "resnet50_cifar", "mobilenet_v2": "mobilenet_v2",
          "resnet50": "resnet50"}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    key = request.param
    fx = FIXTURE[key]
    model = models.get(MODELS[key], fx["num_classes"])
    x = np.random.RandomState(0).standard_normal((2, fx["input_hw"], fx["input_hw"], 3))
    x = jnp.asarray(x.astype(np.float32))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    variables = official_variables(fx["entries"])
    return key, fx, model, x, shapes, variables


def test_weight_shapes_and_parameter_count(case):
    key, fx, _, _, shapes, _variables = case
    ours = {c: {p: tuple(v.shape) for p, v in named_leaves(shapes[c])}
            for c in ("params", "batch_stats")}
    theirs = {c: {p: tuple(to_flax(np.zeros(s)).shape) for _, cc, p, s in fx["entries"]
                  if cc == c} for c in ("params", "batch_stats")}
    assert ours == theirs, key
    count = sum(int(np.prod(s)) for s in ours["params"].values())
    assert count == fx["param_count"]


def test_logits_on_identical_weights(case):
    _key, fx, model, x, _, variables = case
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    np.testing.assert_allclose(np.asarray(apply(variables, x)), np.asarray(fx["eval_logits"]),
                               atol=1e-4, rtol=0)
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
    np.testing.assert_allclose(np.asarray(train(variables, x)), np.asarray(fx["train_logits"]),
                               atol=1e-4, rtol=0)


def test_one_global_20pct_round_prunes_the_official_set(case):
    _key, fx, _, _, _, variables = case
    params = variables["params"]
    mask = lottery.prune_round(params, full_mask(params), 0.2, count_rule="official_aws")
    assert_official_prune(mask, fx["prune_20pct_global"])


def _expected_std(key: str, path: str, shape: list[int]) -> float:
    """The init our model states, as a std: torchvision ResNet convs N(0, 2 / fan_out); PyTorch
    default conv/linear (CIFAR ResNet-50 stem, MobileNetV2, heads) U(+-1/sqrt(fan_in))."""
    if path.endswith(("scale",)):
        return 0.0
    leaf_mod = path.split("/")[-2]
    if path.endswith("bias") and (leaf_mod.endswith("_bn") or leaf_mod.startswith("bn")):
        return 0.0
    if path.startswith("head"):
        fan_in = shape[1] if len(shape) == 2 else None
        if fan_in is None:  # bias: fan_in of the head's weight
            fan_in = 2048 if key.startswith("resnet") else 1280
        return 1 / math.sqrt(fan_in) / math.sqrt(3)
    o, i, kh, kw = shape
    resnet_conv = key.startswith("resnet") and not (key == "resnet50_cifar"
                                                    and path == "stem_conv/kernel")
    if resnet_conv:
        return math.sqrt(2 / (o * kh * kw))
    return 1 / math.sqrt(i * kh * kw) / math.sqrt(3)


def test_init_statistics_match_the_official_init(case):
    key, fx, model, x, _, _ = case
    init = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.PRNGKey(0))
    ours = dict(named_leaves(init["params"]))
    for path, shape, std, mean, absmax in fx["init_stats_seed0"]:
        expected = _expected_std(key, path, shape)
        mine = np.asarray(ours[path], np.float64)
        n = mine.size
        if path.endswith("scale"):
            assert std == 0 and mean == 1 and np.all(mine == 1), path
            continue
        if expected == 0:
            assert std == 0 and mean == 0 and np.all(mine == 0), path
            continue
        tol = 6 / math.sqrt(2 * n) + 1e-3
        # the formula is the official init (torch's draw, seed 0) ...
        assert abs(std / expected - 1) < tol, (path, std, expected)
        # ... and ours follows it
        assert abs(mine.std() / expected - 1) < tol, (path, mine.std(), expected)
        if path.startswith("head") or (key == "mobilenet_v2") or (path == "stem_conv/kernel" and (
                key == "resnet50_cifar")):
            bound = expected * math.sqrt(3)  # uniform: nothing beyond the bound
            assert absmax <= bound * (1 + 1e-6) and np.abs(mine).max() <= bound * (1 + 1e-6)
        else:  # normal, untruncated: the tails reach past 2 std on big layers
            if n > 10_000:
                assert np.abs(mine).max() > 3 * expected and absmax > 3 * expected
