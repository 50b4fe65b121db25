"""The benchmark suite: one command, one table, one JSON file.

    python -m bench.suite                          # everything (several minutes on 2 cores)
    python -m bench.suite --tiny                   # smoke sizes: checks it runs, claims nothing
    python -m bench.suite --only barrier,seeds     # some rows
    python -m bench.suite --out bench/results/suite.json
    python -m bench.suite --isa avx2               # as an AVX2-only machine (bench/isa.py)

Rows (``--only`` names):

* ``train_resnet20``, ``train_convnet``, ``train_vgg11``: img/s of signticket's engine train
  step (masked SGD, sharded jit, no augmentation; :mod:`bench.train_step`) vs the same model
  in eager PyTorch (:mod:`bench.torch_models`; the faster of contiguous / channels_last).
  Goal >= 1.1x (issue 18: ahead of PyTorch, not level). Each side runs in a warm worker
  process of its own and the samples are taken in turn, ``--rounds`` x the workload's samples
  (:mod:`bench.side_by_side`); the ratio is paired by round (median of the per-round ratios),
  since the VM is noisy and a slow spell should hit both sides, not one.
* ``onednn``, ``xla_flag``, ``malloc``: a lever's before/after on the ResNet-20 step, two warm
  workers timed side by side as above, one of them run with the lever off:
  ``SIGNTICKET_CONV=xla`` (XLA's own convolutions instead of oneDNN's;
  ``signticket/native/conv.py``), ``SIGNTICKET_XLA_DEFAULTS=0`` (no YNNPACK fusion flag;
  ``signticket/_xla_flags.py``), ``SIGNTICKET_MALLOC_DEFAULTS=0`` (glibc's default allocator
  behaviour; ``signticket/_host_malloc.py``). The torch workers run with the allocator defaults
  on too (they import signticket), so both sides of the train rows share one setting.
* ``placement``: the same on the convnet step (where it mattered: docs/performance.md, stop
  36), ``SIGNTICKET_CONV_PLACE_TEAMS=0`` (oneDNN's OpenMP teams unpinned; the default pins them
  while no other process loads the CPUs, ``signticket/native/team_placement.h``); and
  ``placement_shared``, two convnet trainers at once in each setting, their combined rate
  (:mod:`bench.shared_cpus`).
* ``bf16``: the ResNet-20 step with the engine's bfloat16 compute policy (``Engine(...,
  compute_dtype="bfloat16")``: float32 params, optimizer state and BN statistics) vs float32.
* ``barrier``: ``lmc.barrier_curve`` (one program) vs per-alpha loop (:mod:`bench.barrier`).
  Goal 3x.
* ``matching``: weight matching on ResNet-20x4 vs a naive loop (:mod:`bench.matching`). Goal 2x.
* ``seeds``: 4 and 8 seeds of the permuted-masks MLP step (goal 1.5x) and of the convnet step,
  vmapped vs sequential, and unrolled side by side in one program (bit-identical to sequential)
  vs sequential (:mod:`bench.seeds`); and an epoch of 4 MLP runs through ``fit`` /
  ``fit_lockstep``, side by side vs sequential, and many steps a call vs one
  (:mod:`bench.epoch_calls`).
* ``sign_in``: Sign-In vs masked SGD, step time and state bytes (:mod:`bench.sign_in`).
* ``imp_round``: a warm ``lottery.imp`` (warm-up + 2 rounds of the AWS CPU config) on real
  Fashion-MNIST, its time split into the pipeline's phases (:mod:`bench.imp_round`,
  :mod:`signticket.phases`); goal: training >= 85 %. And the convnet's evaluation with its
  single-channel first conv as fused taps vs on oneDNN (:mod:`bench.eval_forward`).

Every timing goes through :mod:`bench.timing` (first call incl. compilation apart, then the
median of steady-state repeats, blocked with ``jax.block_until_ready``). The JSON holds every
figure, the table's rows and the machine (platform, CPUs, load, versions, backend, XLA flags).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from bench import (
    barrier,
    epoch_calls,
    eval_forward,
    imp_round,
    isa,
    matching,
    seeds,
    shared_cpus,
    side_by_side,
    sign_in,
    torch_models,
    train_step,
    workloads,
)
from bench.report import Row, format_table, machine_info
from signticket import _host_malloc
from signticket._xla_flags import YNN_FLAG
from signticket.native import conv as native_conv

GROUPS = ("train_resnet20", "train_convnet", "train_vgg11", "onednn", "placement", "xla_flag",
          "malloc", "bf16", "barrier", "matching", "seeds", "sign_in", "imp_round")
LABELS = {"resnet20": "ResNet-20", "convnet": "convnet", "vgg11": "VGG-11"}
#: Train step vs PyTorch (issue 18, goal 1).
TRAIN_STEP_GOAL = 1.1


class Suite:
    """Runs the groups, shares results between them (the bf16 row reuses the ResNet-20 row)."""

    def __init__(self, tiny: bool, torch_baseline: bool, rounds: int = 1) -> None:
        self.tiny = tiny
        self.torch_baseline = torch_baseline
        self.rounds = rounds
        self.details: dict[str, Any] = {}

    # -- train-step throughput -----------------------------------------------------------------

    def engine_result(self, name: str) -> dict[str, Any]:
        key = f"train_{name}"
        if "signticket" not in self.details.get(key, {}):
            w = workloads.train_workload(name, self.tiny)
            steps, repeats = workloads.train_steps(name, self.tiny)
            result = train_step.measure_engine(w.model, w.batch, w.image_shape, steps=steps,
                                               repeats=repeats, augment=False)
            self.details.setdefault(key, {}).update({**w.describe(), "signticket": result})
        return self.details[key]["signticket"]

    def train(self, name: str) -> list[Row]:
        """The train-step row. With torch: signticket and both torch layouts in warm worker
        processes, timed side by side (:mod:`bench.side_by_side`: ``rounds`` x the workload's
        samples, one sample of each side per round), the ratio paired by round. Without
        torch: signticket alone, here."""
        w = workloads.train_workload(name, self.tiny)
        label = f"train step {LABELS[name]} b{w.batch} {'x'.join(map(str, w.image_shape))}"
        key = f"train_{name}"
        has_torch = self.torch_baseline and torch_models.torch_available()
        if not has_torch:
            ours = self.engine_result(name)
            row = Row(key, f"{label} (img/s)", "img/s", ours["img_per_s_median"],
                      "skipped (--no-torch)" if not self.torch_baseline
                      else torch_models.TORCH_MISSING, goal=TRAIN_STEP_GOAL)
        else:
            steps, repeats = workloads.train_steps(name, self.tiny)
            m = side_by_side.measure(name, side_by_side.VARIANTS, rounds=repeats * self.rounds,
                                     number=steps, tiny=self.tiny)
            ours = m.figures["signticket"]
            torch_side = {layout: m.figures[f"torch_{layout}"] for layout in torch_models.LAYOUTS}
            best = max(torch_side, key=lambda k: torch_side[k]["img_per_s_median"])
            paired = m.paired(f"torch_{best}", "signticket")
            self.details[key] = {
                **w.describe(), "signticket": ours, "torch": {**torch_side, "reported": best},
                "paired_ratio": round(paired, 4),
                "rounds": [{"signticket": round(w.batch / a, 1), "torch": round(w.batch / b, 1)}
                           for a, b in zip(m.timings["signticket"].samples_s,
                                           m.timings[f"torch_{best}"].samples_s, strict=True)],
            }
            row = Row(key, f"{label} (img/s)", "img/s", ours["img_per_s_median"],
                      torch_side[best]["img_per_s_median"], goal=TRAIN_STEP_GOAL,
                      paired_ratio=paired, baseline_note=f"(torch {best})",
                      signticket_note=f"(side by side, {repeats * self.rounds} rounds)")
        compile_row = Row(f"{key}_compile", f"  {LABELS[name]} step compile (s)", "s",
                          ours["compile_s"], higher_is_better=False)
        return [row, compile_row]

    def _lever(self, key: str, env: dict[str, str], fields: tuple[str, ...],
               workload: str = "resnet20") -> tuple[dict, dict, float]:
        """``workload``'s step with the lever on (this process's environment) and off (``env``
        on top of it), in two warm workers timed side by side (:mod:`bench.side_by_side`);
        records ``fields`` of both and the paired ratio under ``details[key]`` and returns
        ``(on, off, on's speed-up over off)``."""
        cache = jax.config.jax_compilation_cache_dir
        # the workers share the parent's persistent compilation cache, if any (tests)
        shared = {"JAX_COMPILATION_CACHE_DIR": cache} if cache else {}
        steps, repeats = workloads.train_steps(workload, self.tiny)
        m = side_by_side.measure(workload, {"on": "signticket", "off": "signticket"},
                                 envs={"on": shared, "off": {**env, **shared}},
                                 rounds=repeats * self.rounds, number=steps, tiny=self.tiny)
        on, off = m.figures["on"], m.figures["off"]
        paired = m.paired("off", "on")
        fields = ("img_per_s_median", "compile_s", *fields)
        self.details[key] = {"on": {k: on[k] for k in fields}, "off": {k: off[k] for k in fields},
                             "paired_ratio": round(paired, 4)}
        return on, off, paired

    def onednn(self) -> list[Row]:
        env = dict(os.environ, **{native_conv.ENV_BACKEND: "xla"})
        on, off, paired = self._lever("onednn", env, ("conv_backend", "xla_flags"))
        return [
            Row("onednn", "ResNet-20 step, oneDNN convs vs SIGNTICKET_CONV=xla (img/s)",
                "img/s", on["img_per_s_median"], off["img_per_s_median"],
                paired_ratio=paired, signticket_note=f"({on['conv_backend']})",
                baseline_note=f"({off['conv_backend']})"),
            Row("onednn_compile", "  ResNet-20 step compile, oneDNN vs XLA convs (s)", "s",
                on["compile_s"], off["compile_s"], higher_is_better=False),
        ]

    def placement(self) -> list[Row]:
        env = dict(os.environ, **{native_conv.ENV_PLACE_TEAMS: "0"})
        on, off, paired = self._lever("placement", env, ("conv_backend", "conv_team_placement"),
                                      workload="convnet")
        return [
            Row("placement", "convnet step, OpenMP teams placed (default) vs "
                f"{native_conv.ENV_PLACE_TEAMS}=0 (img/s)", "img/s", on["img_per_s_median"],
                off["img_per_s_median"], paired_ratio=paired,
                signticket_note=f"({on['conv_team_placement']})",
                baseline_note=f"({off['conv_team_placement']})"),
            self._placement_shared(),
        ]

    def _placement_shared(self) -> Row:
        steps, repeats = workloads.train_steps("convnet", self.tiny)
        r = shared_cpus.measure("convnet", rounds=2 * repeats * self.rounds, number=steps,
                                tiny=self.tiny)
        self.details["placement_shared"] = r
        return Row("placement_shared", "  two convnet trainers at once, placed vs "
                   f"{native_conv.ENV_PLACE_TEAMS}=0 (img/s together)", "img/s",
                   r["placed"]["pair_img_per_s_median"], r["off"]["pair_img_per_s_median"],
                   paired_ratio=r["paired_ratio"],
                   signticket_note=f"({r['placed']['conv_team_placement']})",
                   baseline_note=f"({r['off']['conv_team_placement']})")

    def xla_flag(self) -> list[Row]:
        env = dict(os.environ, SIGNTICKET_XLA_DEFAULTS="0")
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                    if not f.startswith(YNN_FLAG))
        on, off, paired = self._lever("xla_flag", env, ("ynn_fusion_flag", "xla_flags",
                                                "SIGNTICKET_XLA_DEFAULTS"))
        return [
            Row("xla_flag", "ResNet-20 step, YNN flag on vs SIGNTICKET_XLA_DEFAULTS=0 (img/s)",
                "img/s", on["img_per_s_median"], off["img_per_s_median"],
                paired_ratio=paired,
                signticket_note="(on)" if on["ynn_fusion_flag"] else "(flag NOT active)",
                baseline_note="(off)" if not off["ynn_fusion_flag"] else "(flag still on!)"),
            Row("xla_flag_compile", "  ResNet-20 step compile, flag on vs off (s)", "s",
                on["compile_s"], off["compile_s"], higher_is_better=False),
        ]

    def malloc(self) -> list[Row]:
        env = dict(os.environ, **{_host_malloc.ENV: "0"})
        on, off, paired = self._lever("malloc", env, ("host_malloc_defaults",))
        return [
            Row("malloc", "ResNet-20 step, host malloc defaults on vs "
                f"{_host_malloc.ENV}=0 (img/s)", "img/s", on["img_per_s_median"],
                off["img_per_s_median"],
                paired_ratio=paired,
                signticket_note="(on)" if on["host_malloc_defaults"] else "(NOT applied)",
                baseline_note="(off)" if not off["host_malloc_defaults"] else "(still on!)"),
        ]

    def bf16(self) -> list[Row]:
        w = workloads.train_workload("resnet20", self.tiny)
        steps, repeats = workloads.train_steps("resnet20", self.tiny)
        fp32 = self.engine_result("resnet20")
        bf16 = train_step.measure_engine(w.model, w.batch, w.image_shape, steps=steps,
                                         repeats=repeats, augment=False,
                                         compute_dtype="bfloat16")
        self.details["bf16"] = {"bfloat16": bf16, "float32_img_per_s": fp32["img_per_s_median"]}
        return [
            Row("bf16", "ResNet-20 step, bfloat16 compute vs float32 (img/s)", "img/s",
                bf16["img_per_s_median"], fp32["img_per_s_median"],
                signticket_note="(bf16)", baseline_note="(fp32)"),
        ]

    # -- the other benchmarks ------------------------------------------------------------------

    def barrier(self) -> list[Row]:
        r = self.details["barrier"] = barrier.run(self.tiny)
        rows = [
            Row("barrier", "barrier curve 11 alphas + BN re-est., one program vs loop (s)", "s",
                r["vmapped"]["median_s"], r["loop"]["median_s"], higher_is_better=False,
                goal=3.0),
            Row("barrier_first_call", "  same, first call incl. compile (s)", "s",
                r["vmapped"]["first_call_s"], r["loop"]["first_call_s"], higher_is_better=False),
        ]
        if "vmap_all" in r:
            rows.append(Row("barrier_vmap_all", "  vmap all 11 alphas at once, vs loop (s)", "s",
                            r["vmap_all"]["median_s"], r["loop"]["median_s"],
                            higher_is_better=False))
        return rows

    def matching(self) -> list[Row]:
        r = self.details["matching"] = matching.run(self.tiny)
        s, n = r["signticket"], r["naive"]
        return [
            Row("matching", f"weight matching {r['model']} vs naive, 2nd call (s)", "s",
                s["second_call_s"], n["seconds"], higher_is_better=False, goal=2.0,
                signticket_note=f"({s['sweeps']} sweeps)", baseline_note=f"({n['sweeps']} sweeps)"),
            Row("matching_first_call", "  same, signticket's first call (s)", "s",
                s["first_call_s"], n["seconds"], higher_is_better=False),
            Row("matching_objective", "  objective sum <W_A, pi(W_B)> reached", "", s["objective"],
                n["objective"]),
        ]

    def seeds(self) -> list[Row]:
        rows = []
        for model in seeds.MODELS:
            r = self.details[f"seeds_{model}"] = seeds.run(self.tiny, model)
            goal = 1.5 if model == "mlp" else None
            for n, v in r["by_seeds"].items():
                what = f"{n} seeds {model} b{r['batch_per_seed']}"
                rows += [
                    Row(f"seeds_{model}_{n}", f"{what}, vmap vs sequential (img/s)", "img/s",
                        v["vmapped_img_per_s"], v["sequential_img_per_s"], goal=goal),
                    Row(f"seeds_unrolled_{model}_{n}", f"{what}, one program unrolled "
                        "(bit-identical) vs sequential (img/s)", "img/s",
                        v["unrolled_img_per_s"], v["sequential_img_per_s"], goal=goal),
                ]
                if "sequential_process_flags_img_per_s" in v:  # the model got its own options
                    rows.append(Row(
                        f"seeds_unrolled_vs_flags_{model}_{n}", f"{what}, one program unrolled "
                        "vs sequential under the process's XLA flags alone (img/s)", "img/s",
                        v["unrolled_img_per_s"], v["sequential_process_flags_img_per_s"],
                        goal=goal))
        e = self.details["epoch_calls"] = epoch_calls.run(self.tiny)
        rate, what = e["img_per_s"], f"{e['members']} MLP runs, fit epoch"
        rows += [
            Row("epoch_calls_side_by_side", f"{what}: side by side vs sequential, "
                f"{e['steps_per_call']} steps a call (img/s)", "img/s", rate["side_by_side"],
                rate["sequential"], paired_ratio=e["side_by_side_vs_sequential"], goal=1.5),
            Row("epoch_calls_sequential", f"{what}: sequential, {e['steps_per_call']} steps a "
                "call vs a step a call (img/s)", "img/s", rate["sequential"],
                rate["sequential_step_per_call"], paired_ratio=e["sequential_vs_step_per_call"]),
        ]
        return rows

    def sign_in(self) -> list[Row]:
        r = self.details["sign_in"] = sign_in.run(self.tiny)
        si, ms = r["sign_in"], r["masked_sgd"]
        return [
            Row("sign_in_step", "Sign-In vs masked SGD step, ResNet-20 90% sparse (ms)", "ms",
                si["step_ms_median"], ms["step_ms_median"], higher_is_better=False),
            Row("sign_in_bytes", "  params + optimizer state (MB)", "MB",
                si["state_bytes"]["total"] / 1e6, ms["state_bytes"]["total"] / 1e6,
                higher_is_better=False),
        ]

    def imp_round(self) -> list[Row]:
        r = self.details["imp_round"] = imp_round.run(self.tiny)
        rows = [Row("imp", f"IMP, warm-up + 2 rounds (warm), {r['train_examples']} FMNIST (s)",
                    "s", r["total_s"], higher_is_better=False)]
        for phase in imp_round.PHASES:
            rows.append(Row(f"imp_{phase.replace(' ', '_')}", f"  {phase}", "s",
                            r["seconds"][phase], higher_is_better=False,
                            signticket_note=f"({r['percent'][phase]:.0f}%)"))
        e = self.details["eval_forward"] = eval_forward.run(self.tiny)
        rate = e["img_per_s"]
        rows.append(Row("eval_convnet", f"convnet evaluation, {e['test_images']} images: first "
                        "conv as fused taps vs oneDNN (img/s)", "img/s", rate["taps"],
                        rate["onednn"], paired_ratio=e["taps_vs_onednn"]))
        return rows

    def run(self, group: str) -> list[Row]:
        runners: dict[str, Callable[[], list[Row]]] = {
            "train_resnet20": lambda: self.train("resnet20"),
            "train_convnet": lambda: self.train("convnet"),
            "train_vgg11": lambda: self.train("vgg11"),
            "onednn": self.onednn,
            "placement": self.placement,
            "xla_flag": self.xla_flag,
            "malloc": self.malloc,
            "bf16": self.bf16,
            "barrier": self.barrier,
            "matching": self.matching,
            "seeds": self.seeds,
            "sign_in": self.sign_in,
            "imp_round": self.imp_round,
        }
        return runners[group]()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the selected rows, print the table, write the JSON; returns what was written."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (figures claim nothing)")
    p.add_argument("--only", default="", help=f"comma-separated rows: {', '.join(GROUPS)}")
    p.add_argument("--out", default="bench/results/suite.json")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    p.add_argument("--isa", choices=sorted(isa.CAPS), default=None,
                   help="measure as a machine with this ISA would: caps oneDNN, ATen, MKL and XLA "
                        "(bench/isa.py); on an AVX-512 machine, --isa avx2 gives the AVX2 table")
    p.add_argument("--rounds", type=int, default=3,
                   help="train-step rows: rounds x the workload's samples of each side, taken in "
                        "turn (bench.side_by_side; 1 with --tiny)")
    args = p.parse_args(argv)
    groups = [g for g in args.only.split(",") if g] or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        p.error(f"unknown rows {unknown}; available: {', '.join(GROUPS)}")

    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.isa and not isa.is_capped(args.isa, os.environ):
        # the caps must be in the environment before the libraries start: a child measures
        out = Path(args.out)
        out.unlink(missing_ok=True)
        rc = isa.run_capped(args.isa, "bench.suite", sys.argv[1:] if argv is None else argv)
        if not out.exists():
            return {"errors": {"isa": f"the capped child process exited with {rc}, no results"}}
        return json.loads(out.read_text())
    machine = machine_info()
    suite = Suite(args.tiny, torch_baseline=not args.no_torch,
                  rounds=1 if args.tiny else args.rounds)
    rows: list[Row] = []
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for group in groups:
        t0 = time.perf_counter()
        print(f"[bench] {group} ...", file=sys.stderr, flush=True)
        try:
            rows += suite.run(group)
        except Exception as e:  # one broken benchmark must not hide the others
            errors[group] = traceback.format_exc()
            rows.append(Row(group, group, "", None, error=f"{type(e).__name__}: {e}"))
        seconds[group] = round(time.perf_counter() - t0, 1)
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    table = format_table(rows)
    print(f"signticket benchmark suite{' (--tiny: smoke sizes, no claims)' if args.tiny else ''}"
          f" - {machine['cpu_count']} CPUs ({machine['cpu_model']}), {machine['backend']}, "
          f"jax {machine['jax']}, torch {machine['torch']}, "
          f"{machine['conv_backend']} convs, "
          f"YNN flag {'on' if machine['ynn_fusion_flag'] else 'off'}, "
          f"malloc defaults {'on' if machine['host_malloc_defaults'] else 'off'}, "
          f"load {machine['load_average_at_start'][0]:.1f}{isa.label(machine['isa_caps'])}")
    print(table)
    result = {
        "tiny": args.tiny,
        "machine": machine,
        "rows": [r.to_json() for r in rows],
        "details": suite.details,
        "group_wall_s": seconds,
        "errors": errors,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
