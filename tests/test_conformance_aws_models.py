"""Conformance of the remaining AWS architectures with the official code, from numbers it computed.

``tests/fixtures/aws_conformance_more.json`` was computed once by ``gen_fixtures_more.py``
(kept outside the project, next to the official code in /work/official-aws), which runs the
official ``models/utils.py::get_model`` (torch 2.13 CPU, torchvision 0.28, einops) and
``utils/prune.py::prune`` for EfficientNet-B0 and ShuffleNet (CIFAR-100, 32 px; Tiny-ImageNet,
200 classes, 64 px), MLP-Mixer and torchvision's MobileNetV2 (ImageNet, 224 px). Per case, on a
seeded weight set that ``seeded_value`` regenerates with numpy: weight shapes and
parameter count; eval-mode, train-mode and AWS-interpolated (every norm at alpha = 0.3) logits
on identical weights and input (batch 2); the mask after one global 20 % magnitude round
(per-layer counts and a hash of each layer's mask, over the official choice of layers); the set
of parameters AWS interpolates; and the official init's per-layer statistics against the
formula our init follows. No torch needed.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _official_layout import assert_official_prune, official_variables, to_flax, to_torch

from signticket import lottery, models
from signticket.tree import is_norm, named_leaves, select

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "aws_conformance_more.json").read_text())
#: fixture case -> registry name
MODELS = {
    "efficientnet_b0_cifar100": "efficientnet_b0",
    "efficientnet_b0_tiny_imagenet": "efficientnet_b0",
    "shufflenet_cifar100": "shufflenet",
    "shufflenet_tiny_imagenet": "shufflenet",
    "mlp_mixer_imagenet": "mlp_mixer",
    "mobilenet_v2_imagenet": "mobilenet_v2_imagenet",
}
# XLA compile time dominates on CPU; these per-compile options (as in test_models.py) cut it
# and change no result beyond float rounding.
FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


@functools.cache
def _case(key: str):
    fx = FIXTURE[key]
    model = models.get(MODELS[key], fx["num_classes"])
    hw = fx["input_hw"]
    x = np.random.RandomState(0).standard_normal((2, hw, hw, 3)).astype(np.float32)
    variables = official_variables(fx["entries"])
    return fx, model, jnp.asarray(x), variables


#: The Tiny-ImageNet variants differ from the CIFAR-100 ones only in the input size and the
#: classifier's width, which the official pruning and our init treat alike; the pruning and
#: init tests (the slow ones: each compiles a full-size program) run on one variant per model,
#: and :func:`test_tiny_imagenet_variants_share_everything_but_the_head` pins that this loses
#: nothing.
OFFICIAL_CONFIGS = ["efficientnet_b0_cifar100", "shufflenet_cifar100", "mlp_mixer_imagenet",
                    "mobilenet_v2_imagenet"]
TINY_VARIANTS = {"efficientnet_b0_tiny_imagenet": "efficientnet_b0_cifar100",
                 "shufflenet_tiny_imagenet": "shufflenet_cifar100"}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    return (request.param, *_case(request.param))


@pytest.fixture(scope="module", params=OFFICIAL_CONFIGS)
def official_case(request):
    return (request.param, *_case(request.param))


@pytest.mark.parametrize("tiny", list(TINY_VARIANTS))
def test_tiny_imagenet_variants_share_everything_but_the_head(tiny):
    cifar = FIXTURE[TINY_VARIANTS[tiny]]
    fx = FIXTURE[tiny]
    assert (fx["num_classes"], fx["input_hw"], cifar["num_classes"], cifar["input_hw"]) == (
        200, 64, 100, 32)
    body = lambda f: [e for e in f["entries"] if not e[2].startswith("head/")]
    assert body(fx) == body(cifar)
    assert fx["prune_20pct_global"] == cifar["prune_20pct_global"]
    assert [s for s in fx["init_stats_seed0"] if not s[0].startswith("head/")] == [
        s for s in cifar["init_stats_seed0"] if not s[0].startswith("head/")]


def test_to_flax_round_trips():
    for shape in ((5, 3, 2, 4), (7, 6, 1), (3, 2), (4,)):
        x = np.arange(np.prod(shape)).reshape(shape)
        np.testing.assert_array_equal(to_torch(to_flax(x)), x)
    conv = np.zeros((8, 3, 5, 7))
    assert to_flax(conv).shape == (5, 7, 3, 8)
    assert to_flax(np.zeros((784, 196, 1))).shape == (1, 196, 784)


def test_weight_shapes_and_parameter_count(case):
    key, fx, model, x, _variables = case
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    ours = {c: {p: tuple(v.shape) for p, v in named_leaves(shapes.get(c, {}))}
            for c in ("params", "batch_stats")}
    theirs = {c: {p: to_flax(np.zeros(s)).shape for _, cc, p, s in fx["entries"] if cc == c}
              for c in ("params", "batch_stats")}
    assert ours == theirs, key
    count = sum(int(np.prod(s)) for s in ours["params"].values())
    assert count == fx["param_count"]


def test_mobilenet_v2_imagenet_width_mult_is_torchvisions():
    """``width_mult`` (a smoke-test knob) follows torchvision's own ``width_mult`` rule."""
    fx = FIXTURE["mobilenet_v2_imagenet_width0.5_shapes"]
    model = models.get("mobilenet_v2_imagenet", 10, width_mult=0.5)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                               train=False))
    ours = {p: tuple(v.shape) for p, v in named_leaves(shapes["params"])}
    assert ours == {p: to_flax(np.zeros(s)).shape for p, s in fx["shapes"]}


@functools.cache
def _logits(key: str) -> dict[str, np.ndarray]:
    """Eval, train (no dropout rng: EfficientNet's classifier dropout off, as in the fixture)
    and AWS-interpolated eval logits of a case, compiled as one program."""
    fx, model, x, variables = _case(key)
    alpha = fx["aws_alpha"]
    # The official norms start at weight 1 / bias 0: that is what AWS interpolates toward.
    psi_init = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.ones_like(v) if p[-1].key == "scale" else jnp.zeros_like(v),
        variables["params"])

    def train_mode(v, x, rngs):
        train, state = model.apply(v, x, train=True, rngs=rngs, capture_intermediates=True,
                                   mutable=["batch_stats", "intermediates"])
        dropout = state["intermediates"].get("head_dropout", {"__call__": (train,)})
        return train, dropout["__call__"][0]

    def run(v, x):
        train, features = train_mode(v, x, {})
        aws = {**v, "params": lottery.aws_interpolate(v["params"], psi_init, alpha)}
        out = {"eval": model.apply(v, x, train=False), "train": train,
               "aws_eval": model.apply(aws, x, train=False)}
        if hasattr(model, "dropout_rate"):  # EfficientNet: its classifier dropout's output
            out["features"] = features
            out["dropped_features"] = train_mode(v, x, {"dropout": jax.random.key(3)})[1]
        return out

    out = jax.jit(run).lower(variables, x).compile(FAST_COMPILE)(variables, x)
    return {k: np.asarray(v) for k, v in out.items()}


def test_logits_on_identical_weights(case):
    key, fx, *_ = case
    ours = _logits(key)
    np.testing.assert_allclose(ours["eval"], np.asarray(fx["eval_logits"]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours["train"], np.asarray(fx["train_logits"]), atol=1e-4, rtol=0)


def test_aws_interpolation_covers_the_official_norms(case):
    """``is_norm`` selects exactly the parameters AWS's ``new_bn_forward`` / ``new_ln_forward``
    interpolate (LayerNorm included), and interpolating them gives the official logits."""
    key, fx, _, _, variables = case
    chosen = {p for p, c in named_leaves(select(variables["params"], is_norm)) if c}
    assert chosen == set(fx["aws_interpolated_params"])
    ours = _logits(key)
    np.testing.assert_allclose(ours["aws_eval"], np.asarray(fx["aws_eval_logits"]), atol=1e-4,
                               rtol=0)
    assert not np.allclose(ours["aws_eval"], ours["eval"], atol=1e-3)  # the alpha did matter


def test_one_global_20pct_round_prunes_the_official_set(official_case):
    _key, fx, _, _, variables = official_case
    params = variables["params"]
    dense = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
    mask = lottery.prune_round(params, dense, 0.2, prunable="kernels_except_head",
                               count_rule="official_aws")
    assert_official_prune(mask, fx["prune_20pct_global"])


def _fan_in(shape: list[int]) -> int:
    return int(np.prod(shape[1:]))  # torch layout: (out, in / groups, *kernel)


def _expected_init(key: str, path: str, shape: list[int], weight_shapes: dict[str, list[int]]
                   ) -> tuple[str, float]:
    """(distribution, std) of the init our model states for a parameter (torch shape):
    norms 1 / 0; torchvision MobileNetV2 convs N(0, 2 / fan_out), its classifier N(0, 0.01)
    with zero bias; everything else PyTorch's default U(+-1/sqrt(fan_in)) (bias: the weight's
    fan-in)."""
    module, leaf = path.rsplit("/", 1)
    if module.endswith(("_bn", "_ln")):
        return ("const", 1.0 if leaf == "scale" else 0.0)
    tv = key == "mobilenet_v2_imagenet"
    if tv and module == "head":
        return ("normal", 0.01) if leaf == "kernel" else ("const", 0.0)
    if tv:
        o, _, kh, kw = shape
        return ("normal", math.sqrt(2 / (o * kh * kw)))
    fan_in = _fan_in(weight_shapes[module])
    return ("uniform", 1 / math.sqrt(fan_in) / math.sqrt(3))


def _init_params(key: str) -> dict:
    _, model, x, _ = _case(key)
    # "rbg" keys compile init far faster than threefry on CPU; the model code is key-agnostic.
    rng = jax.random.key(0, impl="rbg")
    init = jax.jit(lambda k: model.init(k, x[:1], train=False)).lower(rng).compile(FAST_COMPILE)
    return dict(named_leaves(flax.core.unfreeze(init(rng))["params"]))


def test_init_statistics_match_the_official_init(official_case):
    key, fx, *_ = official_case
    ours = _init_params(key)
    weight_shapes = {p.rsplit("/", 1)[0]: s for p, s, *_ in fx["init_stats_seed0"]
                     if p.endswith("/kernel")}
    assert set(ours) == {p for p, *_ in fx["init_stats_seed0"]}  # biases exactly where theirs
    for path, shape, std, mean, absmax in fx["init_stats_seed0"]:
        kind, expected = _expected_init(key, path, shape, weight_shapes)
        mine = np.asarray(ours[path], np.float64)
        if kind == "const":
            assert std == 0 and mean == expected and np.all(mine == expected), path
            continue
        tol = 6 / math.sqrt(2 * mine.size) + 1e-3
        # the formula is the official init (torch's draw, seed 0) ...
        assert abs(std / expected - 1) < tol, (path, std, expected)
        # ... and ours follows it
        assert abs(mine.std() / expected - 1) < tol, (path, mine.std(), expected)
        if kind == "uniform":  # nothing beyond the bound
            bound = expected * math.sqrt(3)
            assert absmax <= bound * (1 + 1e-6) and np.abs(mine).max() <= bound * (1 + 1e-6)
        elif mine.size > 10_000:  # normal, untruncated: the tails reach past 3 std
            assert np.abs(mine).max() > 3 * expected and absmax > 3 * expected, path


def test_efficientnet_dropout_and_no_drop_connect():
    """Official EfficientNet-B0: every block's drop-connect rate is 0 (``b`` never advances),
    the classifier's dropout is p = 0.2 in train mode: with a ``"dropout"`` rng each feature is
    zeroed or scaled by 1 / 0.8; without one (BN-statistics passes) it is the identity."""
    key = "efficientnet_b0_cifar100"  # features from the logits test's program (batch 2)
    fx = FIXTURE[key]
    assert fx["block_drop_rates"] == [0.0] * 16
    assert _case(key)[1].dropout_rate == fx["dropout_rate"] == 0.2
    ours = _logits(key)
    kept, dropped = ours["features"], ours["dropped_features"]
    zero = dropped == 0
    np.testing.assert_allclose(dropped[~zero], kept[~zero] / 0.8, rtol=1e-5)
    assert abs(zero.mean() - 0.2) < 0.06 and np.all(kept != 0)
