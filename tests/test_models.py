"""Model zoo: registry, forward/backward on tiny inputs, naming conventions, BN behaviour."""

from __future__ import annotations

import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from signticket import models
from signticket.models import registry

# Per registry name: small constructor kwargs and a tiny input shape. Test compile time dominates
# on CPU, so widths are shrunk wherever the model exposes them.
CASES: dict[str, tuple[dict, tuple[int, ...]]] = {
    "mlp": ({"widths": (32, 16)}, (2, 28, 28, 1)),
    "convnet": ({"channels": (4, 8, 8)}, (2, 28, 28, 1)),
    "resnet20": ({"width": 1}, (2, 32, 32, 3)),
    "resnet20_rebasin": ({"width": 1}, (2, 32, 32, 3)),
    "resnet18": ({"widths": (4, 8, 8, 16)}, (2, 32, 32, 3)),
    "resnet50": ({"widths": (4, 4, 8, 8)}, (2, 64, 64, 3)),
    "resnet50_cifar": ({"widths": (4, 4, 8, 8)}, (2, 32, 32, 3)),
    "resnet50_wide": ({"widths": (4, 4, 8, 8), "stem_width": 4}, (2, 32, 32, 3)),
    "vgg11": ({}, (2, 32, 32, 3)),
    "vgg11_bn": ({}, (2, 32, 32, 3)),
    "vgg11_nofc": ({}, (2, 32, 32, 3)),
    "vgg16": ({}, (2, 32, 32, 3)),
    "vgg16_bn": ({}, (2, 32, 32, 3)),
    "mobilenet_v2": ({"width_mult": 0.25}, (2, 32, 32, 3)),
    "mobilenet_v2_imagenet": ({"width_mult": 0.25}, (2, 64, 64, 3)),
    "efficientnet_b0": ({"width_mult": 0.25}, (2, 32, 32, 3)),
    "shufflenet": ({"width_mult": 0.1}, (2, 32, 32, 3)),
    "mlp_mixer": ({"image_size": 32, "patch_size": 8, "dim": 16, "depth": 2}, (2, 32, 32, 3)),
}
#: Modules the official code builds but never calls (so their running statistics never move
#: and they get no gradient): EfficientNet's expansion-1 block keeps its expansion conv + BN.
UNUSED_MODULES: dict[str, set[str]] = {"efficientnet_b0": {"block0/expand_conv",
                                                           "block0/expand_bn"}}
NUM_CLASSES = 7


def rng(seed: int) -> jax.Array:
    # "rbg" keys compile init far faster than threefry on CPU; the model code is key-agnostic.
    return jax.random.key(seed, impl="rbg")


def is_norm_name(module: str) -> bool:
    """The normalization-name rule shared with ``signticket.tree``."""
    m = module.lower()
    return m.startswith(("bn", "ln")) or m.endswith(("_bn", "_ln")) or "norm" in m


def modules(params: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], dict]:
    """Leaf-holding modules of a params tree: path -> {param name: array}."""
    out, leaves = {}, {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(modules(value, (*prefix, key)))
        else:
            leaves[key] = value
    if leaves:
        out[prefix] = leaves
    return out


# XLA compile time dominates these tests on CPU. These options (no LLVM optimization, the older
# and cheaper fusion codegen) cut it by ~3x and only slow down the tiny computations; they are
# passed per compile, so nothing else in the process is affected.
FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def synthetic_variables(model: nn.Module, shape: tuple[int, ...]) -> dict:
    """Variables with the structure of ``model.init`` (traced, not compiled: compiling every
    model's random initializers would double the test time; ``init_variables`` itself is
    tested numerically below) and He-scaled values, so activations stay in a normal range."""
    abstract = jax.eval_shape(lambda: model.init(rng(0), jnp.zeros(shape), train=False))
    gen = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(gen.normal(0, np.sqrt(2 / fan_in), leaf.shape), jnp.float32)
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

    variables = jax.tree_util.tree_map_with_path(fill, flax.core.unfreeze(abstract))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


@functools.cache
def built(name: str):
    """Variables and outputs of a registry case: train-mode loss, logits, updated batch_stats
    and gradients with respect to params, plus eval-mode logits, compiled as one program.
    Cached, since several tests inspect the same case."""
    kwargs, shape = CASES[name]
    model = models.get(name, num_classes=NUM_CLASSES, **kwargs)
    variables = synthetic_variables(model, shape)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    labels = jnp.arange(shape[0]) % NUM_CLASSES

    def run(params, stats):
        def loss_fn(p):
            logits, updates = model.apply(
                {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, updates.get("batch_stats", {}))

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        eval_logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
        return {
            "loss": loss, "logits": logits, "eval_logits": eval_logits,
            "batch_stats": new_stats, "grads": grads,
        }  # fmt: skip

    args = (variables["params"], variables["batch_stats"])
    return variables, jax.jit(run).lower(*args).compile(FAST_COMPILE)(*args)


def test_cases_cover_registry():
    assert sorted(CASES) == models.names()
    assert models.names() == sorted(models.names())


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_backward(name):
    variables, out = built(name)
    params, stats = variables["params"], variables["batch_stats"]
    batch = CASES[name][1][0]
    chex.assert_shape([out["logits"], out["eval_logits"]], (batch, NUM_CLASSES))
    chex.assert_tree_all_finite(out)
    chex.assert_trees_all_equal_shapes_and_dtypes(out["grads"], params)
    chex.assert_trees_all_equal_shapes(out["batch_stats"], stats)
    assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(out["grads"]))
    assert "head" in params and set(params["head"]) == {"kernel", "bias"}
    assert params["head"]["kernel"].shape[-1] == NUM_CLASSES
    unused = UNUSED_MODULES.get(name, set())
    for path, grads in modules(out["grads"]).items():
        if "/".join(path) in unused:
            assert all(float(jnp.abs(g).max()) == 0 for g in grads.values()), path
    if stats:  # train mode moved the running statistics (of the modules in use)
        moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), out["batch_stats"], stats)
        for path, leaves in modules(moved).items():
            assert all(leaves.values()) == ("/".join(path) not in unused), path


@pytest.mark.parametrize("name", sorted(CASES))
def test_module_names(name):
    """Norm modules match the name rule, conv/dense modules do not, nothing else exists."""
    variables, _ = built(name)
    n_norm = 0
    for path, leaves in modules(variables["params"]).items():
        where = f"{name}: {'/'.join(path)}"
        if set(leaves) == {"scale", "bias"}:
            assert is_norm_name(path[-1]), where
            n_norm += 1
        else:
            assert set(leaves) in ({"kernel"}, {"kernel", "bias"}), where
            assert not is_norm_name(path[-1]), where
            # dense, Conv1d (MLP-Mixer's token mixing: (1, in, out)), Conv2d
            assert leaves["kernel"].ndim in (2, 3, 4), where
    for path in modules(variables["batch_stats"]):
        assert is_norm_name(path[-1]), f"{name}: {'/'.join(path)}"
    n_layer_norm = sum(1 for path in modules(variables["params"]) if path[-1].endswith("_ln"))
    assert len(modules(variables["batch_stats"])) == n_norm - n_layer_norm  # BN only
    has_norm = name not in ("mlp", "vgg11", "vgg11_nofc", "vgg16")
    assert (n_norm > 0) == has_norm
    assert (variables["batch_stats"] == {}) == (not has_norm or name == "mlp_mixer")


def test_init_variables_distributions():
    """Kaiming-normal (fan_in) kernels, zero biases, BN scale 1 / bias 0, running stats 0 / 1."""
    model = models.get("convnet", 10, channels=(64, 256))
    variables = models.init_variables(model, rng(0), (1, 28, 28, 1))
    assert set(variables) == {"params", "batch_stats"}
    assert type(variables["params"]) is dict and type(variables["batch_stats"]) is dict
    params, stats = variables["params"], variables["batch_stats"]
    kernel = params["conv1"]["kernel"]  # 3x3x64x256: enough samples for a tight std estimate
    np.testing.assert_allclose(float(kernel.std()), np.sqrt(2 / (3 * 3 * 64)), rtol=0.03)
    assert abs(float(kernel.mean())) < 1e-3
    head = params["head"]["kernel"]
    np.testing.assert_allclose(float(head.std()), np.sqrt(2 / 256), rtol=0.1)
    np.testing.assert_array_equal(params["head"]["bias"], 0.0)
    bn = params["bn1"]
    np.testing.assert_array_equal(bn["scale"], 1.0)
    np.testing.assert_array_equal(bn["bias"], 0.0)
    np.testing.assert_array_equal(stats["bn1"]["mean"], 0.0)
    np.testing.assert_array_equal(stats["bn1"]["var"], 1.0)
    assert set(params["conv1"]) == {"kernel"}  # BN follows: no conv bias


def test_conv_bias_only_without_batch_norm():
    plain = param_shapes("vgg11", 10, (1, 32, 32, 3))
    with_bn = param_shapes("vgg11_bn", 10, (1, 32, 32, 3))
    assert all(set(plain[f"conv{i}"]) == {"kernel", "bias"} for i in range(8))
    assert all(set(with_bn[f"conv{i}"]) == {"kernel"} for i in range(8))
    assert set(with_bn) == {f"conv{i}" for i in range(8)} | {f"bn{i}" for i in range(8)} | {"head"}


@functools.cache
def _param_shapes(name: str, num_classes: int, shape: tuple[int, ...], kwargs: tuple) -> dict:
    model = models.get(name, num_classes, **dict(kwargs))
    abstract = jax.eval_shape(lambda: model.init(rng(0), jnp.zeros(shape), train=False))
    return jax.tree.map(lambda s: s.shape, abstract["params"])


def param_shapes(name: str, num_classes: int, shape: tuple[int, ...], **kwargs) -> dict:
    """Shapes of a registry model's params, traced without computing (cached)."""
    return _param_shapes(name, num_classes, shape, tuple(sorted(kwargs.items())))


def param_count(name: str, num_classes: int, shape: tuple[int, ...], **kwargs) -> int:
    shapes = param_shapes(name, num_classes, shape, **kwargs)
    return sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda s: type(s) is tuple))


def test_resnet20_structure_and_size():
    n = param_count("resnet20", 10, (1, 32, 32, 3))
    assert 260_000 <= n <= 280_000, n
    p = param_shapes("resnet20", 10, (1, 32, 32, 3), width=4)
    expected_top = {"stem_conv", "stem_bn", "head"} | {
        f"stage{s}_block{b}" for s in range(3) for b in range(3)
    }
    assert set(p) == expected_top
    assert p["stem_conv"]["kernel"] == (3, 3, 3, 64)
    assert p["stage0_block0"]["conv1"]["kernel"] == (3, 3, 64, 64)
    assert p["stage2_block2"]["conv2"]["kernel"] == (3, 3, 256, 256)
    assert p["head"]["kernel"] == (256, 10)
    # Projection shortcuts exactly where the shape changes.
    with_shortcut = {k for k, v in p.items() if "shortcut_conv" in v}
    assert with_shortcut == {"stage1_block0", "stage2_block0"}
    assert p["stage1_block0"]["shortcut_conv"]["kernel"] == (1, 1, 64, 128)
    assert set(p["stage1_block0"]) == {
        "conv1", "bn1", "conv2", "bn2", "shortcut_conv", "shortcut_bn"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        # Reference counts: torchvision resnet50; CIFAR ResNet-18 / VGG-16-BN (no conv bias).
        ("resnet50", (1, 64, 64, 3), 25_557_032),
        ("resnet18", (1, 32, 32, 3), 11_173_962),
        ("vgg16_bn", (1, 32, 32, 3), 14_724_042),
    ],
)
def test_full_size_param_counts(name, shape, expected):
    num_classes = 1000 if name == "resnet50" else 10
    assert param_count(name, num_classes, shape) == expected


def test_resnet50_structure():
    p = param_shapes("resnet50", 1000, (1, 64, 64, 3))
    blocks = sorted(k for k in p if k.startswith("stage"))
    assert len(blocks) == 3 + 4 + 6 + 3
    assert p["stem_conv"]["kernel"] == (7, 7, 3, 64)
    b = p["stage1_block0"]
    assert b["conv1"]["kernel"] == (1, 1, 256, 128)
    assert b["conv2"]["kernel"] == (3, 3, 128, 128)
    assert b["conv3"]["kernel"] == (1, 1, 128, 512)
    assert b["shortcut_conv"]["kernel"] == (1, 1, 256, 512)
    assert "shortcut_conv" in p["stage0_block0"]  # 64 -> 256 channels at stride 1
    assert "shortcut_conv" not in p["stage0_block1"]
    assert p["head"]["kernel"] == (2048, 1000)


def test_mobilenet_v2_structure():
    p = param_shapes("mobilenet_v2", 10, (1, 32, 32, 3))
    assert len([k for k in p if k.startswith("block")]) == 17
    assert set(p["block3"]) == {
        "expand_conv", "expand_bn", "dw_conv", "dw_bn", "project_conv", "project_bn"
    }  # fmt: skip
    assert p["block3"]["dw_conv"]["kernel"] == (3, 3, 1, 6 * 24)  # depthwise: one input each
    assert p["last_conv"]["kernel"] == (1, 1, 320, 1280)


@pytest.mark.parametrize("name", ["vgg11", "vgg16_bn", "resnet20", "mobilenet_v2"])
def test_runs_on_28x28(name):
    """CIFAR models also accept Fashion-MNIST sized inputs (shape check only, no compute)."""
    model = models.get(name, 10)
    x = jnp.zeros((2, 28, 28, 1))

    def forward():
        variables = model.init(rng(0), x, train=False)
        return model.apply(variables, x, train=False)

    assert jax.eval_shape(forward).shape == (2, 10)


def test_batch_norm_train_and_eval():
    model = models.get("mlp", NUM_CLASSES, widths=(6,), batch_norm=True)
    variables = models.init_variables(model, rng(0), (4, 3, 3, 1))
    params, stats = variables["params"], variables["batch_stats"]
    x = 1.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(3), (4, 3, 3, 1))
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))

    logits, updates = train(variables, x)
    h = np.asarray(x).reshape(4, -1) @ params["fc0"]["kernel"] + params["fc0"]["bias"]
    new = updates["batch_stats"]["bn0"]
    # PyTorch-style momentum: running = 0.9 * running + 0.1 * batch statistic.
    np.testing.assert_allclose(new["mean"], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * h.var(0), rtol=1e-5, atol=1e-6)

    # Train mode normalizes with batch statistics: the running ones do not matter.
    odd_stats = jax.tree.map(lambda a: a + 3.0, stats)
    logits_odd, _ = train({"params": params, "batch_stats": odd_stats}, x)
    np.testing.assert_allclose(logits, logits_odd, rtol=1e-5, atol=1e-5)

    # Eval mode uses the running statistics, never updates them, and treats examples
    # independently of the rest of the batch.
    trained = {"params": params, "batch_stats": updates["batch_stats"]}
    eval_logits, eval_updates = evaluate(trained, x)
    chex.assert_trees_all_close(eval_updates["batch_stats"], updates["batch_stats"])
    np.testing.assert_allclose(evaluate(trained, x[:1])[0], eval_logits[:1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(eval_logits, evaluate(variables, x)[0])


def test_no_batch_norm_means_no_batch_stats():
    model = models.get("mlp", NUM_CLASSES, widths=(6,))
    variables = models.init_variables(model, jax.random.PRNGKey(0), (2, 3, 3, 1))
    assert variables["batch_stats"] == {}
    assert set(variables["params"]) == {"fc0", "head"}
    assert isinstance(variables["params"], dict)


def test_unknown_name():
    with pytest.raises(ValueError,
                       match=r"unknown model 'foo'; available: convnet, efficientnet_b0, mlp"):
        models.get("foo", num_classes=10)


def test_unknown_keyword():
    with pytest.raises(TypeError, match=r"'resnet20'.*'depth'.*accepted: width"):
        models.get("resnet20", num_classes=10, depth=32)
    with pytest.raises(TypeError, match=r"'vgg16_bn'.*'batch_norm'"):
        models.get("vgg16_bn", num_classes=10, batch_norm=False)


def test_keyword_passthrough():
    assert models.get("mlp", 3, widths=[8, 4], batch_norm=True) == models.MLP(
        widths=(8, 4), num_classes=3, batch_norm=True
    )
    assert models.get("resnet20", 10, width=2).width == 2
    assert models.get("mobilenet_v2", 10, width_mult=0.5).width_mult == 0.5
    assert models.get("vgg11_bn", 10).batch_norm and not models.get("vgg11", 10).batch_norm
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.cifar_resnet(21)


def test_register(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @models.register("tiny")
    class Tiny(nn.Module):
        num_classes: int = 10
        hidden: int = 4

        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(self.num_classes, name="head")(x.reshape(x.shape[0], -1))

    assert "tiny" in models.names()
    model = models.get("tiny", num_classes=3, hidden=5)
    assert isinstance(model, Tiny) and model.num_classes == 3 and model.hidden == 5
    with pytest.raises(TypeError, match=r"'tiny'.*'width'"):
        models.get("tiny", num_classes=3, width=2)
    with pytest.raises(ValueError, match="already registered"):
        models.register("tiny")(Tiny)
    models.register("tiny", overwrite=True)(Tiny)


@pytest.mark.parametrize("hw", [(8, 8), (7, 7), (6, 5)])
def test_max_pool_2x2_matches_flax_pool_and_its_gradient(hw):
    from signticket.models.layers import max_pool_2x2

    def flax_pool(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")

    x = jax.random.normal(jax.random.PRNGKey(0), (2, *hw, 3))  # continuous: no ties
    chex.assert_trees_all_close(max_pool_2x2(x), flax_pool(x))
    loss = lambda f: lambda x: jnp.sum(f(x) ** 3)
    chex.assert_trees_all_close(jax.grad(loss(max_pool_2x2))(x), jax.grad(loss(flax_pool))(x))


@pytest.fixture(params=["mask", "index"])
def pool_route(request, monkeypatch):
    """Each test of the max-pool's gradient runs on both of its routes, whatever this CPU is."""
    from signticket.models import layers

    monkeypatch.setattr(layers, "pools_by_index", lambda channels: request.param == "index")
    return request.param


def test_max_pool_2x2_sends_each_windows_gradient_to_its_first_maximum_like_pytorch(pool_route):
    from signticket.models.layers import max_pool_2x2

    # Window 1: all zeros (a ReLU'd window); window 2: a tie at (0,1) and (1,0); window 3: the
    # maximum last; window 4: a tie between (1,0) and (1,1).
    x = jnp.array([[0., 0., 1., 3., 1., 2., 5., 0.],
                   [0., 0., 3., 2., 0., 7., 6., 6.]]).reshape(1, 2, 8, 1)
    g = jnp.array([1., 2., 3., 4.]).reshape(1, 1, 4, 1)
    _, vjp = jax.vjp(max_pool_2x2, x)
    (dx,) = jax.jit(vjp)(g)
    expected = jnp.array([[1., 0., 0., 2., 0., 0., 0., 0.],
                          [0., 0., 0., 0., 0., 3., 4., 0.]]).reshape(1, 2, 8, 1)
    chex.assert_trees_all_equal(dx, expected)
    # Every window passes on exactly its own gradient, also on random data with many ties.
    x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(1), (3, 6, 6, 4)))
    g = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 3, 4))
    (dx,) = jax.vjp(max_pool_2x2, x)[1](g)
    chex.assert_trees_all_close(dx.reshape(3, 3, 2, 3, 2, 4).sum((2, 4)), g)
    assert int(jnp.sum(dx != 0)) == int(jnp.sum(g != 0))
    # Forward mode is the same linear map (curvature's Hessian-vector products run jvp over grad):
    # <J t, g> == <t, J^T g>, and a forward-over-reverse product goes through.
    t = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    _, jt = jax.jvp(max_pool_2x2, (x,), (t,))
    chex.assert_trees_all_close(jnp.vdot(jt, g), jnp.vdot(t, dx), rtol=1e-5)

    def loss(x_):
        return jnp.sum(max_pool_2x2(x_) ** 2)

    _, hvp = jax.jit(lambda v: jax.jvp(jax.grad(loss), (x,), (v,)))(t)
    chex.assert_trees_all_close(hvp, 2.0 * jnp.where(dx != 0, t, 0.0), atol=1e-6)


def test_max_pool_gradient_routes_agree(monkeypatch):
    """The index route (AVX2 CPUs, few channels) and the mask route give the same values in
    reverse and forward mode: ties, all-zero (ReLU'd) windows, NaN windows and the -inf padding
    of odd sizes. Only the sign of a zero may differ: each route sums zeros somewhere (the mask's
    tangent over a window, the index's transpose over four zero-padded parts)."""
    from signticket.models import layers

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 5))
    x = jnp.where(jax.random.uniform(jax.random.PRNGKey(1), x.shape) < 0.4, 0.0, x)
    x = x.at[0, :2, :2, 0].set(jnp.nan).at[1, 2:4, 2:4, 1].set(-0.0)
    g = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 4, 5)).at[0, 0, 0, 2].set(-0.0)
    t = jax.random.normal(jax.random.PRNGKey(3), x.shape).at[1, 0, 0, 3].set(-0.0)
    results = {}
    for route in ("mask", "index"):
        monkeypatch.setattr(layers, "pools_by_index", lambda channels, r=route: r == "index")
        y, vjp = jax.vjp(layers.max_pool_2x2, x)
        _, jt = jax.jvp(layers.max_pool_2x2, (x,), (t,))
        results[route] = [np.asarray(a) for a in (y, jax.jit(vjp)(g)[0], jt)]
    for mask_side, index_side in zip(results["mask"], results["index"], strict=True):
        np.testing.assert_array_equal(mask_side, index_side)  # NaN == NaN here; -0.0 == 0.0
        assert np.count_nonzero(mask_side) == np.count_nonzero(index_side) > 0


def test_max_pool_gives_the_same_maxima_differentiated_or_not():
    """Evaluation pools elementwise (:func:`layers._slice_max`), training through the rule's
    reduction: the same maxima either way, NaN and -inf windows included."""
    from signticket.models import layers

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 8, 6))
    x = jnp.where(jax.random.uniform(jax.random.PRNGKey(1), x.shape) < 0.4, 0.0, x)
    x = x.at[0, :2, :2, 0].set(jnp.nan).at[1, 4:6, 2:4, 1].set(-jnp.inf)
    evaluated = jax.jit(layers.max_pool_2x2)(x)
    differentiated, _ = jax.jit(lambda x: jax.vjp(layers.max_pool_2x2, x))(x)
    reference = np.asarray(x).reshape(3, 5, 2, 4, 2, 6).max(axis=(2, 4))
    for pooled in (evaluated, differentiated):
        np.testing.assert_array_equal(pooled, reference)


def test_pools_route_by_index_only_on_few_channels_without_avx512(monkeypatch):
    from signticket import _xla_flags
    from signticket.models import layers

    assert not _xla_flags.xla_cpu_targets_avx512("--xla_cpu_max_isa=AVX2")
    assert _xla_flags.xla_cpu_targets_avx512("--xla_cpu_max_isa=AVX2 --xla_cpu_max_isa=AVX512") \
        is _xla_flags._host_has_avx512()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")
    assert layers.pools_by_index(layers.INDEX_POOL_MAX_CHANNELS)
    assert not layers.pools_by_index(layers.INDEX_POOL_MAX_CHANNELS + 1)
    monkeypatch.setattr(_xla_flags, "_host_has_avx512", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert not layers.pools_by_index(1)


def test_pooling_before_the_relu_is_the_same_function_and_gradient():
    """The convnet pools before its ReLU (cheaper); that must not change values or gradients,
    including windows that are all negative and windows whose maximum is tied."""
    from signticket.models.layers import max_pool_2x2

    x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 3)), 1)
    g = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 3, 3))
    relu_first = lambda x_: max_pool_2x2(jax.nn.relu(x_))
    pool_first = lambda x_: jax.nn.relu(max_pool_2x2(x_))
    y1, vjp1 = jax.vjp(relu_first, x)
    y2, vjp2 = jax.vjp(pool_first, x)
    chex.assert_trees_all_equal(y1, y2)
    chex.assert_trees_all_equal(vjp1(g), vjp2(g))


@pytest.mark.parametrize(
    "hw,kernel,strides,cin,im2col",
    [((2, 2), 3, 1, 5, True), ((1, 1), 3, 1, 5, True), ((2, 1), 1, 1, 5, True),
     ((4, 4), 3, 2, 5, False), ((9, 7), 3, 1, 1, True), ((9, 7), 3, 1, 2, False)],
)
def test_conv_layer_equals_xla_conv_on_im2col_and_fallback_paths(
        hw, kernel, strides, cin, im2col, monkeypatch):
    """Without oneDNN, the im2col path (tiny outputs, single-channel inputs) and the fallback
    agree with lax.conv_general_dilated in value and in both gradients."""
    from signticket.models.layers import conv

    monkeypatch.setenv("SIGNTICKET_CONV", "xla")

    layer = conv(6, kernel, strides=strides, name="conv0")
    x = jax.random.normal(jax.random.PRNGKey(0), (3, *hw, cin))
    variables = layer.init(jax.random.PRNGKey(1), x)
    pad = kernel // 2

    def reference(kernel_, x_):
        return jax.lax.conv_general_dilated(
            x_, kernel_, (strides, strides), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")

    def ours(kernel_, x_):
        return layer.apply({"params": {"kernel": kernel_}}, x_)

    w = variables["params"]["kernel"]
    assert ("conv_general_dilated" not in str(jax.make_jaxpr(ours)(w, x))) == im2col
    chex.assert_trees_all_close(ours(w, x), reference(w, x), atol=1e-5)
    loss = lambda f: lambda k, x_: jnp.sum(jnp.sin(f(k, x_)))
    chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(w, x),
                                jax.grad(loss(reference), argnums=(0, 1))(w, x), atol=1e-5)


@pytest.mark.parametrize(
    "hw,kernel,strides,padding,dense",
    [((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1)), True),
     ((1, 1), (3, 3), (1, 1), ((1, 1), (1, 1)), True),
     ((2, 1), (3, 3), (1, 1), ((1, 1), (1, 1)), True),
     ((2, 2), (3, 3), (2, 2), ((1, 1), (1, 1)), True),
     ((2, 2), (2, 3), (1, 1), ((0, 1), (2, 0)), True),
     ((2, 2), (2, 3), (1, 1), "SAME", True),
     ((2, 2), (1, 1), (1, 1), ((0, 0), (0, 0)), False),  # the map would cost more products
     ((3, 3), (3, 3), (1, 1), ((1, 1), (1, 1)), False)],
)
def test_tiny_image_convs_run_as_their_dense_map(hw, kernel, strides, padding, dense):
    """Convs on images of <= 4 pixels (VGG's last stage) are one matmul by their dense linear
    map, whatever conv backend is on: value, both gradients, a Hessian-vector product (forward
    over reverse, as curvature.py runs it) and vmap equal ``lax.conv_general_dilated``."""
    from signticket.models.layers import conv_general_dilated

    x = jax.random.normal(jax.random.PRNGKey(0), (3, *hw, 5))
    w = jax.random.normal(jax.random.PRNGKey(1), (*kernel, 5, 4))
    dn = ("NHWC", "HWIO", "NHWC")

    def ours(w_, x_):
        return conv_general_dilated(x_, w_, strides, padding, dimension_numbers=dn)

    def reference(w_, x_):
        return jax.lax.conv_general_dilated(x_, w_, strides, padding, dimension_numbers=dn,
                                            precision="highest")

    jaxpr = str(jax.make_jaxpr(ours)(w, x))
    assert ("conv_general_dilated" not in jaxpr and "onednn" not in jaxpr) == dense
    chex.assert_trees_all_close(ours(w, x), reference(w, x), atol=1e-4)
    loss = lambda f: lambda k, x_: jnp.sum(jnp.sin(f(k, x_)))
    chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(w, x),
                                jax.grad(loss(reference), argnums=(0, 1))(w, x), atol=1e-4)
    v = jax.random.normal(jax.random.PRNGKey(2), w.shape)
    hvp = lambda f: jax.jvp(jax.grad(lambda k: loss(f)(k, x)), (w,), (v,))[1]
    chex.assert_trees_all_close(hvp(ours), hvp(reference), atol=1e-3)
    ws = jnp.stack([w, -w])
    chex.assert_trees_all_close(jax.vmap(ours, (0, None))(ws, x),
                                jax.vmap(reference, (0, None))(ws, x), atol=1e-4)


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_equals_flax_batch_norm(train):
    """Our one-multiply-add BatchNorm has flax's variables, statistics, running-average update
    and (up to rounding) outputs and gradients; it is only a cheaper evaluation."""
    import flax.linen as nn

    from signticket.models.layers import batch_norm

    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (8, 5, 5, 6))
    ours = batch_norm(train, name="bn0")
    ref = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    init_ours, init_ref = ours.init(jax.random.PRNGKey(1), x), ref.init(jax.random.PRNGKey(1), x)
    chex.assert_trees_all_equal(init_ours, init_ref)
    variables = {
        "params": {"scale": jnp.linspace(0.5, 2.0, 6), "bias": jnp.linspace(-1.0, 1.0, 6)},
        "batch_stats": {"mean": jnp.ones(6), "var": 2.0 * jnp.ones(6)},
    }

    def run(module, params, x_):
        return module.apply({**variables, "params": params}, x_, mutable=["batch_stats"])

    (y1, stats1), (y2, stats2) = run(ours, variables["params"], x), run(ref, variables["params"], x)
    chex.assert_trees_all_close(y1, y2, atol=2e-6)
    chex.assert_trees_all_close(stats1, stats2, rtol=1e-6)
    if train:  # the running averages moved
        assert not np.allclose(stats1["batch_stats"]["mean"], 1.0)
    loss = lambda m: lambda p, x_: jnp.sum(jnp.sin(run(m, p, x_)[0]))
    chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(variables["params"], x),
                                jax.grad(loss(ref), argnums=(0, 1))(variables["params"], x),
                                rtol=1e-4, atol=1e-5)


def test_channel_shuffle_interleaves_groups():
    """ShuffleNet's shuffle: channel ``j * groups + g`` of the output is channel
    ``g * (c / groups) + j`` of the input (groups read round-robin)."""
    from signticket.errors import UserError
    from signticket.models.shufflenet import channel_shuffle

    x = jnp.arange(6.0).reshape(1, 1, 1, 6)
    np.testing.assert_array_equal(channel_shuffle(x, 3)[0, 0, 0], [0, 2, 4, 1, 3, 5])
    np.testing.assert_array_equal(channel_shuffle(x, 2)[0, 0, 0], [0, 3, 1, 4, 2, 5])
    with pytest.raises(UserError, match="7 channels"):
        channel_shuffle(jnp.zeros((1, 1, 1, 7)), 3)


@pytest.mark.parametrize(
    "hw,kernel,strides,channels",
    [((9, 7), 3, 1, 5), ((9, 7), 3, 2, 5), ((8, 8), 5, 2, 3), ((4, 4), 5, 1, 2), ((1, 1), 3, 1, 4),
     ((6, 5), 1, 2, 3)],
)
def test_depthwise_conv_equals_xla_grouped_conv(hw, kernel, strides, channels):
    """Depthwise convs (groups == channels) run as shifted strided slices on the CPU backend;
    value and both gradients equal ``lax.conv_general_dilated`` with feature_group_count."""
    from signticket.models.layers import conv

    layer = conv(channels, kernel, strides=strides, groups=channels, name="dw")
    x = jax.random.normal(jax.random.PRNGKey(0), (3, *hw, channels))
    w = layer.init(jax.random.PRNGKey(1), x)["params"]["kernel"]
    assert w.shape == (kernel, kernel, 1, channels)
    pad = kernel // 2

    def reference(kernel_, x_):
        return jax.lax.conv_general_dilated(
            x_, kernel_, (strides, strides), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
            precision="highest")

    def ours(kernel_, x_):
        return layer.apply({"params": {"kernel": kernel_}}, x_)

    assert "conv_general_dilated" not in str(jax.make_jaxpr(ours)(w, x))
    chex.assert_trees_all_close(ours(w, x), reference(w, x), atol=1e-5)
    loss = lambda f: lambda k, x_: jnp.sum(jnp.sin(f(k, x_)))
    chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(w, x),
                                jax.grad(loss(reference), argnums=(0, 1))(w, x), atol=1e-5)
    # vmapped members (per-member kernels) stay exact too
    ws = jnp.stack([w, 2 * w])
    chex.assert_trees_all_close(jax.vmap(ours, in_axes=(0, None))(ws, x),
                                jax.vmap(reference, in_axes=(0, None))(ws, x), atol=1e-5)
