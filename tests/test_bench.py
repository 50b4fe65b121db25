"""The benchmark runs (tiny sizes; no timing assertions — timings live in bench/, not tests)."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from bench import (
    conv_ops,
    dot_rates,
    init_compile,
    isa,
    profile_step,
    shared_cpus,
    side_by_side,
    step_options,
    suite,
    timing,
    torch_models,
    train_step,
    workloads,
)
from signticket import _xla_flags, cpu_tuning
from signticket.native import conv as native_conv


def test_train_step_bench_runs(tmp_path):
    out = tmp_path / "bench.json"
    result = train_step.main(["--tiny", "--model", "convnet", "--image-shape", "28,28,1",
                              "--sparsity", "0.5", "--out", str(out)])
    assert result["img_per_s_median"] > 0 and json.loads(out.read_text())["model"] == "convnet"


def test_conv_ops_bench_runs(tmp_path):
    out = tmp_path / "conv_ops.json"
    result = conv_ops.main(["--tiny", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["conv"] for r in rows] == [r["conv"] for r in result["rows"]] and rows
    for row in rows:
        assert all(row[f"{impl}_{op}_ms"] > 0 for op in conv_ops.OPS
                   for impl in ("signticket", "xla"))
        assert row["signticket_conv"] == ("onednn" if native_conv.enabled() else "xla")
        # torch is the optional `bench` extra: its columns exist exactly when it is installed.
        has_torch = torch_models.torch_available()
        assert all((f"torch_{op}_ms" in row) is has_torch for op in conv_ops.OPS), row
        assert not has_torch or all(row[f"torch_{op}_ms"] > 0 for op in conv_ops.OPS)


# Rows every full --tiny run must produce, with a positive signticket figure.
EXPECTED_ROWS = [
    "train_resnet20", "train_resnet20_compile", "train_convnet", "train_convnet_compile",
    "train_vgg11", "train_vgg11_compile", "onednn", "onednn_compile", "placement",
    "placement_shared", "xla_flag", "xla_flag_compile", "malloc", "bf16",
    "barrier",
    "barrier_first_call", "matching", "matching_first_call", "matching_objective",
    "seeds_mlp_2", "seeds_convnet_2", "seeds_unrolled_mlp_2", "seeds_unrolled_convnet_2",
    # The MLP's own XLA options against the process's flags alone: only where there are any.
    *(["seeds_unrolled_vs_flags_mlp_2"] if _xla_flags.llvm_o1_options() else []),
    "epoch_calls_side_by_side", "epoch_calls_sequential",
    "sign_in_step", "sign_in_bytes", "imp",
    *(f"imp_{p}" for p in ("training", "evaluation", "checkpointing", "pruning", "epoch_hooks",
                           "run_setup", "other")),
    "eval_convnet",
]
# Phases that may take no measurable time at tiny sizes (nothing to do, or all asynchronous).
MAY_BE_ZERO = {"imp_pruning", "imp_epoch_hooks", "imp_other"}
# Rows compared with a baseline (the train-step rows' baseline is PyTorch).
TORCH_ROWS = {"train_resnet20", "train_convnet", "train_vgg11"}
BASELINE_ROWS = {"onednn", "onednn_compile", "placement", "placement_shared", "xla_flag",
                 "xla_flag_compile",
                 "malloc", "bf16",
                 "barrier", "barrier_first_call",
                 "matching", "matching_first_call", "matching_objective", "seeds_mlp_2",
                 "seeds_convnet_2", "seeds_unrolled_mlp_2", "seeds_unrolled_convnet_2",
                 "seeds_unrolled_vs_flags_mlp_2", "epoch_calls_side_by_side",
                 "epoch_calls_sequential", "sign_in_step", "sign_in_bytes", "eval_convnet"}


def test_suite_tiny_runs_every_row(tmp_path):
    out = tmp_path / "suite.json"
    result = suite.main(["--tiny", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["errors"] == {}, written["errors"]
    rows = {r["key"]: r for r in written["rows"]}
    assert sorted(rows) == sorted(EXPECTED_ROWS)
    for key, row in rows.items():
        assert row["signticket"] is not None, row
        assert row["signticket"] > 0 or key in MAY_BE_ZERO, row
        if key in BASELINE_ROWS:
            assert row["baseline"] > 0 and row["ratio"] > 0, row
    has_torch = torch_models.torch_available()
    for key in TORCH_ROWS:
        if has_torch:
            assert rows[key]["baseline"] > 0 and rows[key]["ratio"] > 0, rows[key]
        else:
            assert rows[key]["baseline"] == torch_models.TORCH_MISSING
    machine = written["machine"]
    assert machine["cpu_count"] >= 1 and machine["backend"] and machine["jax"]
    assert isinstance(machine["ynn_fusion_flag"], bool)
    # The flag row's child ran without the YNNPACK flag, whatever this process runs with.
    assert written["details"]["xla_flag"]["off"]["ynn_fusion_flag"] is False
    # The placement row's other worker ran with its OpenMP teams unpinned.
    assert written["details"]["placement"]["off"]["conv_team_placement"] == "off"
    # And in the two-trainer row, both workers of the "off" pair.
    shared = written["details"]["placement_shared"]
    assert shared["off"]["conv_team_placement"] == "off"
    assert shared["placed"]["conv_team_placement"] == native_conv.team_placement()
    assert len(shared["per_round_pair_img_per_s"]) == shared["rounds"] >= 2
    # Likewise the malloc row's child ran with glibc's default allocator behaviour.
    assert written["details"]["malloc"]["off"]["host_malloc_defaults"] is False
    assert result["rows"] == written["rows"]
    # Seeds side by side in one program compute exactly what they compute one at a time.
    for model in ("mlp", "convnet"):
        diff = written["details"][f"seeds_{model}"]["by_seeds"]["2"]["max_abs_diff_vs_sequential"]
        assert diff["unrolled"] == 0.0, diff


def test_suite_reports_missing_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_models, "torch_available", lambda: False)
    result = suite.main(["--tiny", "--only", "train_convnet", "--out", str(tmp_path / "s.json")])
    row = next(r for r in result["rows"] if r["key"] == "train_convnet")
    assert row["baseline"] == torch_models.TORCH_MISSING and row["ratio"] is None


def test_suite_rejects_unknown_rows(tmp_path):
    with pytest.raises(SystemExit):
        suite.main(["--only", "nope", "--out", str(tmp_path / "s.json")])


def test_init_compile_bench_checks_the_init_options_keep_every_bit(tmp_path):
    out = tmp_path / "init.json"
    result = init_compile.main(["--models", "mlp", "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row == result["rows"][0] and row["model"] == "mlp" and row["input"] == [1, 28, 28, 1]
    assert row["bit_identical"] is True and row["default_compile_s"] > 0
    with pytest.raises(SystemExit):
        init_compile.main(["--models", "mlp,nope"])


def test_step_options_bench_times_both_sides_in_one_process(tmp_path):
    out = tmp_path / "steps.json"
    result = step_options.main(["--models", "convnet,mlp", "--blocks", "3", "--tiny",
                                "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == result["rows"] and [r["model"][:7] for r in rows] == ["convnet", "mlp (pe"]
    for name, row in zip(("convnet", "mlp"), rows, strict=True):
        w = step_options._workload(name, True)[0]
        assert row["options"] == cpu_tuning.program_options(
            workloads.init_variables(w.model, w.image_shape, 0))
        assert row["o1_step_ms_median"] > 0 and row["default_level_step_ms_median"] > 0
        assert 0 <= row["blocks_o1_faster"] <= 3
        assert row["experiments_use_o1"] is (name == "mlp")
        assert isinstance(row["sides_bit_identical"], bool)
    for bad in (["--models", "convnet,nope"], ["--blocks", "0"], ["--models", ""]):
        with pytest.raises(SystemExit):
            step_options.main(bad)


def test_isa_caps_replace_only_their_own_settings():
    env = isa.capped_env("avx2", {"XLA_FLAGS": "--xla_cpu_max_isa=AVX512 --foo=1", "HOME": "/h"})
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert env["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert env["XLA_FLAGS"].split() == ["--foo=1", "--xla_cpu_max_isa=AVX2"] and env["HOME"] == "/h"
    assert isa.is_capped("avx2", env) and not isa.is_capped("avx2", {"HOME": "/h"})
    assert isa.label(isa.state({})) == "" and "AVX2" in isa.label(isa.state(env))
    with pytest.raises(ValueError, match="unknown ISA cap 'avx9'"):
        isa.capped_env("avx9", {})


def test_suite_isa_cap_measures_in_a_capped_child(tmp_path):
    before = dict(os.environ)
    out = tmp_path / "s.json"
    result = suite.main(["--tiny", "--isa", "avx2", "--only", "train_convnet", "--no-torch",
                         "--out", str(out)])
    assert result["errors"] == {} and result == json.loads(out.read_text())
    assert result["machine"]["isa_caps"] == isa.CAPS["avx2"]
    assert next(r for r in result["rows"] if r["key"] == "train_convnet")["signticket"] > 0
    assert dict(os.environ) == before  # the caps stayed in the child


@pytest.mark.skipif(not native_conv.enabled(), reason="no oneDNN convolutions here")
def test_isa_cap_reaches_onednn():
    """oneDNN itself reports the capped ISA (its verbose header), not just the environment."""
    code = ("import jax.numpy as jnp; from signticket.native import conv;"
            "print(float(conv.conv(jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8))).sum()))")
    env = {**isa.capped_env("avx2", os.environ), "ONEDNN_VERBOSE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = [line for line in proc.stdout.splitlines() if "isa:" in line]
    assert header and all("AVX2" in line and "512" not in line for line in header), header


def test_profile_split_counts_overlap_once():
    assert profile_step.union_seconds([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4
    ops = [("signticket_onednn_conv.3", 0.0, 2.0),
           ("signticket_onednn_conv_kernel_grad.1", 1.0, 3.0),
           ("ynn_fusion.7", 2.5, 4.0), ("add_maximum_fusion.2", 4.0, 5.0)]
    result = profile_step.split(ops, steps=2, wall_s=6.0)
    assert result["step_ms"] == 3000 and result["busy_ms"] == 2500
    assert result["conv_wall_ms"] == 1500  # forward and kernel gradient overlap 1 s of 3
    assert result["thread_ms"]["oneDNN conv kernel gradient"] == 1000
    assert result["wall_ms"]["YNNPACK fusions"] == 750
    assert result["top_op_kinds_thread_ms"]["add_maximum_fusion"] == 500


def test_profile_step_bench_splits_a_traced_step(tmp_path):
    result = profile_step.main(["--model", "convnet", "--tiny", "--steps", "2",
                                "--out", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text())["busy_ms"] == result["busy_ms"]
    assert 0 < result["busy_ms"] <= result["step_ms"] * 1.01
    assert result["thread_ms"]["XLA fusions and ops"] > 0
    convs = [result["thread_ms"][c] for c in profile_step.CATEGORIES[:3]]
    # where convs run on oneDNN, all three ops show up; elsewhere none
    assert all(t > 0 for t in convs) if native_conv.enabled() else not any(convs)
    with pytest.raises(SystemExit):
        profile_step.main(["--model", "nope"])


def test_profile_bounds_the_torch_ratio_from_each_side_s_split():
    # ours: 100 ms a step traced, 80 of it in convs; untraced 110 ms -> convs 88, the rest 22
    ours = {"step_ms": 100.0, "conv_wall_ms": 80.0}
    torch_side = {"step_ms": 132.0, "conv_ms": 99.0}
    bound = profile_step.against_torch(ours, 110.0, torch_side)
    assert bound == {"as_timed": 1.2, "ours_convs_only": 1.5,
                     "ours_with_torch_conv_time": round(132 / (99 + 22), 3)}
    assert profile_step.torch_category("aten::convolution_backward") == "conv"
    assert profile_step.torch_category("aten::mkldnn_convolution") == "conv"
    assert profile_step.torch_category("aten::native_batch_norm_backward") == "other"
    assert profile_step.torch_category(
        "autograd::engine::evaluate_function: ConvolutionBackward0") is None


def test_profile_step_against_torch_profiles_the_twin_in_its_own_process(tmp_path):
    pytest.importorskip("torch")
    result = profile_step.main(["--model", "convnet", "--tiny", "--steps", "2",
                                "--torch", "channels_last", "--out", str(tmp_path / "p.json")])
    t = result["torch"]
    assert t["layout"] == "channels_last" and t["setting"]["channels_last"]
    assert 0 < t["conv_share"] < 1 and 0 < t["conv_ms"] < t["step_ms"]
    assert t["profiled_op_ms"]["conv"] > 0 and t["profiled_op_ms"]["other"] > 0
    assert set(result["torch_over_ours"]) == {"as_timed", "ours_convs_only",
                                              "ours_with_torch_conv_time"}
    assert result["torch_over_ours"]["as_timed"] == pytest.approx(
        t["step_ms"] / result["untraced_step_ms"], rel=1e-2)
    assert "torch" in json.loads((tmp_path / "p.json").read_text())


def test_profile_step_against_torch_without_torch_is_one_message(monkeypatch, capsys):
    monkeypatch.setattr(torch_models, "torch_available", lambda: False)
    with pytest.raises(SystemExit):
        profile_step.main(["--model", "convnet", "--tiny", "--torch", "contiguous"])
    assert "--torch needs PyTorch: pip install -e '.[bench]'" in capsys.readouterr().err


def test_dot_rates_times_the_mlp_first_layer_matmuls_on_each_backend(tmp_path):
    four = dot_rates.shapes(128, 4)
    assert four == {"forward x@W, 4 seeds": ((128, 784), (784, 512), False),
                    "kernel grad x^T dy, 4 seeds": ((128, 784), (128, 512), True)}
    # the kernel gradient contracts over the batch: (784 x 128) @ (128 x 512)
    assert dot_rates.flops((128, 784), (128, 512), True) == 2 * 784 * 128 * 512
    assert dot_rates.flops((128, 784), (784, 128), False) == 2 * 128 * 784 * 128
    result = dot_rates.main(["--tiny", "--out", str(tmp_path / "d.json")])
    assert [r["matmul"] for r in result["rows"]] == [
        "forward x@W, 1 seed", "kernel grad x^T dy, 1 seed", "forward x@W, 4 seeds",
        "kernel grad x^T dy, 4 seeds", "peak 64^3"]
    for row in result["rows"]:
        assert row["xla_engine_options"] > 0 and row["xla_process_flags"] > 0
        assert ("torch" in row) == torch_models.torch_available()
    assert json.loads((tmp_path / "d.json").read_text())["rows"] == result["rows"]
    with pytest.raises(SystemExit):
        dot_rates.main(["--batch", "0"])


def test_alternating_timer_takes_samples_in_turn_and_pairs_them():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    result = timing.time_alternating(calls, repeats=4, number=2)
    # first calls alone, then rounds of one sample (2 calls) each, the order rotating per round
    rounds = ["abc", "bca", "cab", "abc"]
    assert "".join(order) == "abc" + "".join("".join(c * 2 for c in r) for r in rounds)
    assert list(result) == ["a", "b", "c"]
    assert all(len(t.samples_s) == 4 and t.number == 2 for t in result.values())

    def fake(*seconds):
        return timing.Timing(0.0, sorted(seconds)[len(seconds) // 2], seconds, 1)

    # a slow spell hits both sides of round 2: the paired figure stays at the true 2x
    slow, fast = fake(2.0, 2.0, 20.0), fake(1.0, 1.0, 10.0)
    assert timing.paired_speedup(slow, fast) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="not paired"):
        timing.paired_speedup(slow, fake(1.0))
    with pytest.raises(ValueError, match="no calls"):
        timing.time_alternating({})
    with pytest.raises(ValueError, match="repeats >= 1"):
        timing.time_alternating(calls, repeats=0)


def test_a_warm_sample_leaves_the_slow_calls_after_idling_untimed(monkeypatch):
    # a call slowed for its first three calls after idling, as the convnet step after a pause;
    # the clock is simulated (each call advances it, in binary fractions of a second so that
    # the sums are exact) so that the counts are exact on any machine
    slow, fast = 2.0**-6, 2.0**-10
    clock = types.SimpleNamespace(now=0.0, idle_until=0.0)
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    calls = []

    def call():
        calls.append(clock.now)
        clock.now += slow if clock.now < clock.idle_until else fast

    def after_idling():
        calls.clear()
        clock.idle_until = clock.now + 3 * slow

    after_idling()
    assert timing.sample(call, 3) == slow  # all three slow, timed
    after_idling()
    assert timing.sample(call, 3, warm_s=4 * slow) == fast
    assert len(calls) - 3 == 3 + 16  # untimed: the three slow calls, then fast ones to 4 * slow
    after_idling()
    timing.sample(call, 2, warm_s=1e-9)
    assert len(calls) == 3  # at least one untimed call


def test_side_by_side_workers_take_samples_in_turn_under_their_own_environment():
    # two engine workers, one with XLA's convolutions: the lever reaches only its worker
    m = side_by_side.measure("convnet", {"default": "signticket", "xla": "signticket"},
                             envs={"xla": {native_conv.ENV_BACKEND: "xla"}}, rounds=3,
                             number=2, tiny=True, pause_s=0.0)
    assert m.figures["xla"]["conv_backend"] == "xla"
    assert m.figures["default"]["conv_backend"] == ("onednn" if native_conv.enabled() else "xla")
    for name, t in m.timings.items():
        # the parent's record and the worker's own figures hold the same samples
        assert len(t.samples_s) == 3 and t.number == 2 and t.first_s > 0
        assert m.figures[name]["timing"]["samples_s"] == [round(x, 6) for x in t.samples_s]
        assert m.figures[name]["batch_size"] == 8
    assert m.paired("default", "xla") > 0
    with pytest.raises(ValueError, match="unknown variant"):
        side_by_side.Worker("jax", "convnet")
    with pytest.raises(RuntimeError, match="unknown workload 'nope'"):
        side_by_side.Worker("signticket", "nope", tiny=True)


def test_side_by_side_runs_the_torch_step_in_both_layouts():
    pytest.importorskip("torch")
    m = side_by_side.measure("convnet", side_by_side.VARIANTS, rounds=2, number=1, tiny=True)
    assert [m.figures[f"torch_{layout}"]["channels_last"] for layout in torch_models.LAYOUTS] \
        == [False, True]
    assert m.figures["torch_contiguous"]["param_count"] == m.figures["signticket"]["param_count"]


def test_a_pair_of_trainers_is_as_fast_as_its_slower_member():
    # Two steps (one each) per the slower process's step: a starved member counts against its
    # setting instead of the other one finishing alone.
    assert shared_cpus.pair_seconds((0.1, 0.3)) == pytest.approx(0.15)
    assert shared_cpus.pair_seconds((0.2, 0.2)) == pytest.approx(0.1)


def test_eval_forward_bench_traces_its_baseline_on_the_conv_before_the_taps():
    """``bench.eval_forward``'s baseline runs the single-channel conv as before stop 40
    (oneDNN, else im2col) and only while it traces; the default runs the taps."""
    from bench.eval_forward import first_conv_on_onednn
    from signticket.models.layers import conv_general_dilated

    x, w = jnp.ones((2, 6, 6, 1)), jnp.ones((3, 3, 1, 4))
    program = lambda: str(jax.make_jaxpr(lambda x_, w_: conv_general_dilated(
        x_, w_, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))(x, w))
    with first_conv_on_onednn():
        before = program()
    assert "one_input_channel_conv" in program()
    assert "one_input_channel_conv" not in before
    assert ("signticket_onednn_conv" in before) == native_conv.enabled()
    assert ("dot_general" in before) != native_conv.enabled()
