"""The CPU XLA defaults signticket applies on import: which flags, and when it keeps out."""

import os

import chex
import pytest

from signticket import _xla_flags


def test_older_jaxlibs_get_only_the_fusion_types_they_accept():
    # An unknown enum value in XLA_FLAGS aborts the process, so this must be exact.
    assert _xla_flags.ynn_value((0, 8, 1)) == "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"
    assert _xla_flags.ynn_value((0, 10, 2)).endswith(",LIBRARY_FUSION_TYPE_REDUCE")


@pytest.mark.parametrize(
    "env,expect_ours",
    [({}, True), ({"SIGNTICKET_XLA_DEFAULTS": "0"}, False)],
)
def test_apply_appends_the_flag_unless_opted_out(monkeypatch, env, expect_ours):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(_xla_flags, "_jaxlib_version", lambda: (0, 10, 2))
    assert _xla_flags.apply_cpu_defaults() is expect_ours
    flags = os.environ["XLA_FLAGS"]
    assert flags.startswith("--xla_force_host_platform_device_count=2")
    assert (f"{_xla_flags.YNN_FLAG}=" in flags) is expect_ours


def test_a_user_set_value_is_left_alone(monkeypatch):
    mine = f"{_xla_flags.YNN_FLAG}=LIBRARY_FUSION_TYPE_DOT"
    monkeypatch.setenv("XLA_FLAGS", mine)
    assert _xla_flags.apply_cpu_defaults()
    assert os.environ["XLA_FLAGS"] == mine


def test_with_onednn_convs_only_dots_and_reductions_go_to_ynnpack():
    assert _xla_flags.ynn_value((0, 10, 2), onednn_convs=True) == (
        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE")
    # Dots alone measured slower than no flag: older jaxlibs get none.
    assert _xla_flags.ynn_value((0, 9, 0), onednn_convs=True) == ""


@pytest.mark.parametrize("jaxlib,expected", [((0, 10, 2), True), ((0, 9, 0), False)])
def test_apply_with_onednn_convs(monkeypatch, jaxlib, expected):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.delenv("SIGNTICKET_XLA_DEFAULTS", raising=False)
    monkeypatch.setattr(_xla_flags, "_jaxlib_version", lambda: jaxlib)
    monkeypatch.setattr(_xla_flags, "onednn_convs_expected", lambda flags: True)
    assert _xla_flags.apply_cpu_defaults() is expected
    assert ("LIBRARY_FUSION_TYPE_ELTWISE" in os.environ["XLA_FLAGS"]) is False


def test_onednn_convs_are_not_expected_when_opted_out_or_with_several_devices(monkeypatch):
    monkeypatch.delenv("SIGNTICKET_CONV", raising=False)
    assert not _xla_flags.onednn_convs_expected("--xla_force_host_platform_device_count=8")
    monkeypatch.setenv("SIGNTICKET_CONV", "xla")
    assert not _xla_flags.onednn_convs_expected("")


DOT, REDUCE = "LIBRARY_FUSION_TYPE_DOT", "LIBRARY_FUSION_TYPE_REDUCE"


@pytest.mark.parametrize("flags, expected", [
    (f"--x=1 {_xla_flags.YNN_FLAG}={DOT},{REDUCE}", {_xla_flags.YNN_FLAG[2:]: REDUCE}),
    (f"{_xla_flags.YNN_FLAG}={DOT}", {_xla_flags.YNN_FLAG[2:]: ""}),
    (f"{_xla_flags.YNN_FLAG}={REDUCE}", {}),  # no dots to take out
    ("--xla_force_host_platform_device_count=2", {}),
])
def test_conv_free_programs_take_dots_out_of_the_ynn_flag(monkeypatch, flags, expected):
    monkeypatch.delenv("SIGNTICKET_XLA_DEFAULTS", raising=False)
    assert _xla_flags.conv_free_options(flags) == expected
    monkeypatch.setenv("SIGNTICKET_XLA_DEFAULTS", "0")
    assert _xla_flags.conv_free_options(flags) == {}


def test_program_options_apply_to_models_without_convolutions_only(monkeypatch):
    import jax
    import numpy as np

    from signticket import cpu_tuning, models

    monkeypatch.delenv("SIGNTICKET_XLA_DEFAULTS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", f"{_xla_flags.YNN_FLAG}={DOT},{REDUCE}")
    x = np.zeros((1, 28, 28, 1), np.float32)

    def shapes(name, **kw):
        model = models.get(name, num_classes=10, **kw)
        return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))

    o1 = {"xla_backend_optimization_level": 1}
    assert cpu_tuning.program_options(shapes("mlp", widths=(8,))) == {
        _xla_flags.YNN_FLAG[2:]: REDUCE, **o1}
    # conv models keep XLA's defaults: -O1 slowed MobileNetV2's depthwise convs
    assert cpu_tuning.program_options(shapes("convnet", channels=(4, 4, 4))) == {}
    assert cpu_tuning.program_options(shapes("mobilenet_v2", width_mult=0.1)) == {}
    monkeypatch.setenv("SIGNTICKET_XLA_DEFAULTS", "0")
    assert cpu_tuning.program_options(shapes("mlp", widths=(8,))) == {}
    assert cpu_tuning.program_options(shapes("convnet", channels=(4, 4, 4))) == {}


def test_init_options_are_llvm_o1_unless_opted_out(monkeypatch):
    from signticket import cpu_tuning

    monkeypatch.delenv("SIGNTICKET_XLA_DEFAULTS", raising=False)
    assert _xla_flags.llvm_o1_options() == {"xla_backend_optimization_level": 1}
    assert cpu_tuning.init_program_options() == _xla_flags.llvm_o1_options()  # the CPU backend
    monkeypatch.setenv("SIGNTICKET_XLA_DEFAULTS", "0")
    assert _xla_flags.llvm_o1_options() == {} == cpu_tuning.init_program_options()


@pytest.mark.parametrize("name, kwargs", [("convnet", {"channels": (8, 8, 16)}),
                                          ("mlp", {"widths": (32, 32)})])
def test_steps_at_o1_are_deterministic_and_round_like_o2(name, kwargs):
    # The MLP's steps compile at LLVM -O1 for speed (bench.step_options measures the others).
    # What -O1 may change is rounding only: two compiles agree bit for bit, -O2 agrees bit for
    # bit, and XLA's default (-O3) to float32 rounding.
    import jax
    import numpy as np
    import optax

    from signticket import cpu_tuning, data, models
    from signticket.train import Engine

    model = models.get(name, num_classes=10, **kwargs)
    pre = data.Preprocess(mean=(0.3,), std=(0.3,), crop_padding=2, flip=True)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.integers(0, 256, (16, 28, 28, 1), np.uint8),
                "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(3)]
    variables = models.init_variables(model, jax.random.PRNGKey(0), (1, 28, 28, 1))
    options = {**cpu_tuning.program_options(variables), "xla_backend_optimization_level": 1}

    def train(opts):
        engine = Engine(model, optax.sgd(0.1, momentum=0.9), pre, compiler_options=opts)
        state = engine.init_state(jax.random.PRNGKey(1), batches[0]["image"][:1])
        for batch in batches:
            state, metrics = engine.train_step(state, batch)
        return jax.device_get((state, metrics, engine.eval_step(state, batches[0])))

    ours = train(options)
    chex.assert_trees_all_equal(ours, train(dict(options)))
    chex.assert_trees_all_equal(ours, train({**options, "xla_backend_optimization_level": 2}))
    default = train({k: v for k, v in options.items() if k != "xla_backend_optimization_level"})
    chex.assert_trees_all_close(ours, default, rtol=1e-4, atol=1e-5)


def test_the_engines_init_is_bit_identical_to_a_default_compile():
    # A run's init is one of its inputs: options that moved a bit would orphan every run made
    # before them. ``python -m bench.init_compile`` checks every registered model.
    import jax
    import numpy as np
    import optax

    from signticket import models
    from signticket.train import Engine

    model = models.get("convnet", num_classes=10)
    images = np.zeros((1, 28, 28, 1), np.uint8)
    engine = Engine(model, optax.sgd(0.1))
    default = jax.jit(lambda k, x: model.init(k, x, train=False))
    for seed in (0, 3):
        key = jax.random.PRNGKey(seed)
        ours = engine.init_variables(key, images)
        theirs = default(key, engine.preprocess(jax.numpy.asarray(images), None, False))
        np.testing.assert_equal(jax.device_get(ours),
                                jax.device_get({"params": theirs["params"],
                                                "batch_stats": theirs["batch_stats"]}))


def test_init_inside_another_trace_runs_without_the_options():
    # a nested program cannot carry compiler options: eval_shape / jit of an init still work
    import jax
    import numpy as np

    from signticket import models

    model = models.get("mlp", num_classes=10, widths=(8,))
    key = jax.random.PRNGKey(0)  # concrete: the trace, not the argument, must decide
    abstract = jax.eval_shape(lambda: models.init_variables(model, key, (1, 28, 28, 1)))
    assert abstract["params"]["head"]["kernel"].shape == (8, 10)
    traced = jax.jit(lambda k: models.init_variables(model, k, (1, 28, 28, 1)))(key)
    np.testing.assert_equal(jax.device_get(traced),
                            jax.device_get(models.init_variables(model, key, (1, 28, 28, 1))))
