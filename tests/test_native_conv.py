"""oneDNN convolutions (signticket.native.conv): equal to XLA's conv in value and in every
derivative the library takes (reverse, forward-over-reverse, vmapped), and routed to by the
model layers on a single-device CPU backend."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from signticket.native import build
from signticket.native import conv as native_conv

# (input NHWC, kernel HW, out channels, strides, padding): stride-1 and stride-2 convs with
# symmetric, asymmetric and no padding, 1x1 kernels, a single input channel, 1x1 images.
CASES = [
    ((3, 9, 7, 4), (3, 3), 5, (1, 1), ((1, 1), (1, 1))),
    ((2, 9, 8, 3), (3, 3), 4, (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 8, 3), (1, 1), 6, (2, 2), ((0, 0), (0, 0))),
    ((2, 5, 6, 3), (3, 3), 2, (1, 1), ((2, 0), (1, 3))),
    ((4, 7, 7, 1), (3, 3), 8, (1, 1), ((1, 1), (1, 1))),
    ((3, 1, 1, 5), (3, 3), 4, (1, 1), ((1, 1), (1, 1))),
]


def _operands(case, seed=0):
    x_shape, (kh, kw), cout, _, _ = case
    kx, kw_ = jax.random.split(jax.random.PRNGKey(seed))
    return (jax.random.normal(kx, x_shape),
            jax.random.normal(kw_, (kh, kw, x_shape[-1], cout)) / 3.0)


def _reference(strides, padding):
    return lambda x, w: lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")


def _ours(strides, padding):
    return lambda x, w: native_conv.conv(x, w, strides, padding)


def _loss(f):
    return lambda x, w: jnp.sum(jnp.sin(f(x, w)))


def test_library_builds_and_registers():
    """CI installs oneDNN and a compiler: the library must build, or every test below would
    silently measure XLA instead."""
    assert native_conv.available(), native_conv.unavailable_reason()


@pytest.mark.parametrize("case", CASES)
def test_conv_and_gradients_equal_xla(case):
    _, _, _, strides, padding = case
    x, w = _operands(case)
    ours, ref = _ours(strides, padding), _reference(strides, padding)
    chex.assert_trees_all_close(jax.jit(ours)(x, w), ref(x, w), atol=1e-5)
    chex.assert_trees_all_close(jax.jit(jax.grad(_loss(ours), (0, 1)))(x, w),
                                jax.grad(_loss(ref), (0, 1))(x, w), atol=2e-5, rtol=1e-5)


class TestVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_value_and_grad_with_and_without_jit(self):
        strides, padding = (1, 1), ((1, 1), (1, 1))
        x, w = _operands(CASES[0])
        ours = self.variant(jax.value_and_grad(_loss(_ours(strides, padding)), (0, 1)))
        value, grads = ours(x, w)
        ref_value, ref_grads = jax.value_and_grad(_loss(_reference(strides, padding)), (0, 1))(x, w)
        chex.assert_trees_all_close((value, grads), (ref_value, ref_grads), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("case", CASES[:4])
def test_forward_over_reverse_hvp_equals_xla(case):
    """GraSP's Hessian-vector products take jvp of grad through every conv."""
    _, _, _, strides, padding = case
    x, w = _operands(case)
    v = jax.random.normal(jax.random.PRNGKey(7), w.shape)

    def hvp(f):
        return jax.jvp(lambda w_: jax.grad(_loss(f), 1)(x, w_), (w,), (v,))[1]

    chex.assert_trees_all_close(jax.jit(lambda: hvp(_ours(strides, padding)))(),
                                hvp(_reference(strides, padding)), atol=1e-4, rtol=1e-4)
    # And reverse over reverse (gradient of a gradient norm) with respect to the input.
    gnorm = lambda f: lambda x_: jnp.sum(jax.grad(_loss(f), 1)(x_, w) ** 2)
    chex.assert_trees_all_close(jax.grad(gnorm(_ours(strides, padding)))(x),
                                jax.grad(gnorm(_reference(strides, padding)))(x),
                                atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("members", [3, native_conv.MAX_UNROLLED_MEMBERS + 2])
def test_vmap_over_inputs_and_over_weights(members):
    """Shared weights fold the vmapped axis into the conv batch (one custom call); batched
    weights (vmapped seeds) run per member, unrolled or as a loop. Both equal XLA."""
    case = CASES[1]
    _, _, _, strides, padding = case
    x, w = _operands(case)
    xs = jnp.stack([x * (i + 1) for i in range(members)])
    ws = jnp.stack([w * (-1) ** i / (i + 1) for i in range(members)])
    ours, ref = _ours(strides, padding), _reference(strides, padding)
    shared = jax.vmap(ours, (0, None))
    assert str(jax.make_jaxpr(shared)(xs, w)).count("signticket_onednn_conv[") == 1
    chex.assert_trees_all_close(shared(xs, w), jax.vmap(ref, (0, None))(xs, w), atol=1e-4)
    # Per-member weights: one custom call over a members axis, not one per member.
    assert str(jax.make_jaxpr(jax.vmap(ours))(xs, ws)).count("signticket_onednn_conv[") == 1
    chex.assert_trees_all_close(jax.vmap(ours)(xs, ws), jax.vmap(ref)(xs, ws), atol=1e-4)
    chex.assert_trees_all_close(jax.vmap(ours, (None, 0))(x, ws),
                                jax.vmap(ref, (None, 0))(x, ws), atol=1e-4)
    grads = jax.jit(jax.vmap(jax.grad(_loss(ours), (0, 1))))(xs, ws)
    chex.assert_trees_all_close(grads, jax.vmap(jax.grad(_loss(ref), (0, 1)))(xs, ws),
                                atol=1e-3, rtol=1e-4)


@pytest.mark.skipif(not native_conv.bf16_supported(), reason="no native bfloat16 on this CPU")
@pytest.mark.parametrize("case", CASES[:2])
def test_bfloat16_conv_and_gradients_track_float32(case):
    """bfloat16 operands (float32 accumulation inside oneDNN): within bfloat16 rounding of the
    float32 reference, outputs and both gradients in bfloat16."""
    _, _, _, strides, padding = case
    x, w = _operands(case)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    ours, ref = _ours(strides, padding), _reference(strides, padding)
    y = jax.jit(ours)(xb, wb)
    assert y.dtype == jnp.bfloat16
    y_ref = ref(xb.astype(jnp.float32), wb.astype(jnp.float32))
    chex.assert_trees_all_close(y.astype(jnp.float32), y_ref, atol=0.05, rtol=0.02)
    dy = jax.random.normal(jax.random.PRNGKey(3), y.shape)
    _, vjp = jax.vjp(ours, xb, wb)
    _, vjp_ref = jax.vjp(ref, xb.astype(jnp.float32), wb.astype(jnp.float32))
    for g, g_ref in zip(vjp(dy.astype(jnp.bfloat16)), vjp_ref(dy), strict=True):
        assert g.dtype == jnp.bfloat16
        scale = float(jnp.abs(g_ref).max())
        chex.assert_trees_all_close(g.astype(jnp.float32) / scale, g_ref / scale, atol=0.02)


@pytest.mark.parametrize("in_axes", [(0, 0), (None, 0), (0, None), (1, 2)])
def test_derivatives_of_vmapped_convs_equal_xla(in_axes):
    """Differentiating through vmap (members axis on some operands, a shared operand's
    cotangent summed over members), vmap of forward-over-reverse, and nested vmaps."""
    case = CASES[1]
    _, _, _, strides, padding = case
    x, w = _operands(case)
    members = 3
    xs = jnp.stack([x * (i + 1) for i in range(members)], axis=in_axes[0] or 0)
    ws = jnp.stack([w * (-1) ** i / (i + 1) for i in range(members)], axis=in_axes[1] or 0)
    xs = x if in_axes[0] is None else xs
    ws = w if in_axes[1] is None else ws
    ours, ref = _ours(strides, padding), _reference(strides, padding)

    def total(f):
        return lambda a, b: jnp.sum(jnp.sin(jax.vmap(f, in_axes)(a, b)))

    chex.assert_trees_all_close(jax.jit(jax.grad(total(ours), (0, 1)))(xs, ws),
                                jax.grad(total(ref), (0, 1))(xs, ws), atol=1e-3, rtol=1e-4)
    tangent = jax.random.normal(jax.random.PRNGKey(5), jnp.shape(ws))

    def hvp(f):
        return jax.jvp(lambda b: jax.grad(total(f), 1)(xs, b), (ws,), (tangent,))[1]

    chex.assert_trees_all_close(jax.jit(lambda: hvp(ours))(), hvp(ref), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("outer", [2, native_conv.MAX_UNROLLED_MEMBERS + 1])
def test_nested_vmaps_equal_xla(outer):
    case = CASES[0]
    _, _, _, strides, padding = case
    x, w = _operands(case)
    # Distinct members at the scale of real activations (outputs of O(1)): with inputs of
    # O(outer) the float32 rounding of sin's argument alone exceeded the tolerance.
    xss = jnp.stack([jnp.stack([x + 0.1 * (i + j) for j in range(2)]) for i in range(outer)])
    wss = jnp.stack([jnp.stack([w * (1 + 0.1 * (i - j)) for j in range(2)])
                     for i in range(outer)])
    ours, ref = _ours(strides, padding), _reference(strides, padding)
    loss = lambda f: lambda a, b: jnp.sum(jnp.sin(jax.vmap(jax.vmap(f))(a, b)))
    chex.assert_trees_all_close(jax.jit(jax.vmap(jax.vmap(ours)))(xss, wss),
                                jax.vmap(jax.vmap(ref))(xss, wss), atol=1e-4)
    chex.assert_trees_all_close(jax.jit(jax.grad(loss(ours), (0, 1)))(xss, wss),
                                jax.grad(loss(ref), (0, 1))(xss, wss), atol=1e-3, rtol=1e-4)


def test_rejects_unsupported_operands():
    x, w = _operands(CASES[0])
    with pytest.raises(ValueError, match="unsupported operands"):
        native_conv.conv(x.astype(jnp.bfloat16), w, (1, 1), ((1, 1), (1, 1)))  # mixed
    with pytest.raises(ValueError, match="unsupported operands"):
        native_conv.conv(x.astype(jnp.float16), w.astype(jnp.float16), (1, 1), ((1, 1), (1, 1)))
    with pytest.raises(ValueError, match="unsupported operands"):
        native_conv.conv(x, w, (1, 1), ((-1, 1), (1, 1)))


def test_layers_route_to_onednn_unless_turned_off(monkeypatch):
    from signticket.models.layers import conv

    layer = conv(6, 3, strides=2, name="conv0")
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    variables = layer.init(jax.random.PRNGKey(1), x)
    routed = lambda: str(jax.make_jaxpr(layer.apply)(variables, x))
    assert "signticket_onednn_conv[" in routed()
    monkeypatch.setenv("SIGNTICKET_CONV", "xla")
    assert "signticket_onednn_conv[" not in routed()
    monkeypatch.setenv("SIGNTICKET_CONV", "cudnn")
    with pytest.raises(ValueError, match="SIGNTICKET_CONV='cudnn'"):
        routed()
    # bfloat16 (Engine compute_dtype) goes to oneDNN where the CPU has it; float16 never.
    monkeypatch.setenv("SIGNTICKET_CONV", "auto")
    for dtype, routed_there in ((jnp.bfloat16, native_conv.bf16_supported()),
                                (jnp.float16, False)):
        cast = jax.tree.map(lambda a, d=dtype: a.astype(d), variables)
        jaxpr = str(jax.make_jaxpr(layer.apply)(cast, x.astype(dtype)))
        assert ("signticket_onednn_conv[" in jaxpr) is routed_there, dtype


def test_resnet_gradients_equal_on_both_backends(monkeypatch):
    """A whole model (strided convs, shortcuts, BN) differentiates the same on oneDNN and XLA."""
    from signticket.models import registry

    model = registry.get("resnet20", num_classes=10)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(1), x, train=False)

    def grads():
        def loss(params):
            out, _ = model.apply({**variables, "params": params}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.mean(out ** 2)
        return jax.grad(loss)(variables["params"])

    on_onednn = grads()
    monkeypatch.setenv("SIGNTICKET_CONV", "xla")
    chex.assert_trees_all_close(on_onednn, grads(), atol=1e-4, rtol=1e-3)


def test_missing_onednn_reports_how_to_install(monkeypatch):
    monkeypatch.setattr(build, "onednn_prefix", lambda: None)
    path, reason = build.library_path()
    assert path is None and "pip install onednn-cpu-gomp" in reason


def test_several_devices_keep_xla_convs():
    """With 8 (forced) CPU devices the custom call would be replicated, not sharded, so the
    layers keep XLA's conv there; forcing oneDNN (``SIGNTICKET_CONV=onednn``) is still exact on
    batch-sharded inputs."""
    code = """
import os
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from signticket.native import conv as c
assert jax.device_count() == 8 and not c.enabled()
os.environ["SIGNTICKET_CONV"] = "onednn"
assert c.enabled()
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (16, 9, 9, 3)),
                   NamedSharding(mesh, PartitionSpec("data")))
w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
ours = lambda x, w: jnp.sum(jnp.sin(c.conv(x, w, (2, 2), ((1, 1), (1, 1)))))
ref = lambda x, w: jnp.sum(jnp.sin(lax.conv_general_dilated(
    x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))))
got = jax.jit(jax.grad(ours, (0, 1)))(x, w)
want = jax.grad(ref, (0, 1))(x, w)
print(max(float(jnp.abs(a - b).max()) for a, b in zip(got, want)))
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env.pop("SIGNTICKET_CONV", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-4


def test_concurrent_convs_in_one_program_are_exact():
    """XLA runs independent ops on several threads at once; each call must use its own
    scratch (a shared oneDNN scratchpad would mix results). Many independent input and kernel
    gradients of one shape in one program must equal the same ops run one by one."""
    strides, padding = (2, 2), ((1, 1), (1, 1))
    x, w = _operands(CASES[1])
    members = 12
    xs = [x * (i + 1) for i in range(members)]
    ws = [w / (i + 1) for i in range(members)]
    grad = jax.grad(_loss(_ours(strides, padding)), (0, 1))

    together = jax.jit(lambda xs_, ws_: [grad(a, b) for a, b in zip(xs_, ws_, strict=True)])
    one_by_one = [jax.jit(grad)(a, b) for a, b in zip(xs, ws, strict=True)]
    for _ in range(3):
        chex.assert_trees_all_equal(together(xs, ws), one_by_one)


def test_unavailable_library_falls_back_to_xla_with_one_warning(monkeypatch):
    monkeypatch.setattr(native_conv, "_load", lambda: "oneDNN not found; install it with ...")
    native_conv._warn_fallback_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="convolutions stay on XLA"):
        assert not native_conv.enabled()
    monkeypatch.setenv("SIGNTICKET_CONV", "onednn")
    with pytest.raises(RuntimeError, match="SIGNTICKET_CONV=onednn but oneDNN not found"):
        native_conv.enabled()


def test_unwritable_cache_is_a_reason_not_a_crash(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SIGNTICKET_NATIVE_CACHE", str(blocker / "sub"))
    path, reason = build.library_path()
    assert path is None and "SIGNTICKET_NATIVE_CACHE" in reason
