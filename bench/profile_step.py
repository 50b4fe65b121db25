"""Where a train step's time goes: a profiler trace of a few warm steps, split by kind of op.

    python -m bench.profile_step                   # ResNet-20, batch 128
    python -m bench.profile_step --model convnet --steps 10 --out profile.json
    python -m bench.profile_step --tiny            # smoke run (CI): tiny sizes, no figures claimed

What is measured: the suite's train-step workload (:func:`bench.train_step.engine_step`, the
options experiments use), warmed up, then ``--steps`` steps under ``jax.profiler.trace``. The
trace's XLA threads are read back (the ``XSpace`` protobuf, with TensorFlow's bindings)
and every op executed there is put in one category: oneDNN convolution forward / input
gradient / kernel gradient (:mod:`signticket.native.conv`), YNNPACK fusions (dots, BatchNorm
reductions) and XLA's own fusions and ops. Per step: each category's thread time (ops on both
threads add up), its wall time (the union of its intervals: overlapping ops counted once), the
wall time any op ran, the step's wall time (traced, and timed untraced before the trace), and
the op kinds that took longest. Writes JSON.

With ``--torch channels_last`` (or ``contiguous``) the same model's eager PyTorch step
(:func:`bench.torch_models.torch_step`, the suite's baseline) is profiled too
(``torch.profiler`` in a process of its own: each aten op's own time on the calling thread,
split into convolutions and the rest), both steps are also timed untraced, and the split says
what bounds the ratio: torch's step over ours as timed, over our conv time alone (ours if
every other op took no time), and over ours with our convs at torch's conv time (ours if only
the convs changed).

    python -m bench.profile_step --model resnet20 --torch channels_last
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from bench import report, timing, torch_models, train_step, workloads

#: the threads a program's ops (and the custom calls) run on: XLA:CPU's intra-op workers, and
#: the PjRt client's threads, which run a program's first ops themselves (most of an
#: evaluation's, whose ops form one chain)
WORKER_THREADS = ("tf_XLAEigen", "tf_XLAPjRtCpuClient")
#: trace events that are bookkeeping around the ops, not ops
_NOT_OPS = ("ThreadpoolListener", "ThunkExecutor", "end: ", "SlinkyThreadPool")
CATEGORIES = ("oneDNN conv forward", "oneDNN conv input gradient", "oneDNN conv kernel gradient",
              "YNNPACK fusions", "XLA fusions and ops")


def category(op: str) -> str:
    """The category of an op executed on a worker thread, by its HLO instruction name."""
    if op.startswith("signticket_onednn_conv_input_grad"):
        return CATEGORIES[1]
    if op.startswith("signticket_onednn_conv_kernel_grad"):
        return CATEGORIES[2]
    if op.startswith("signticket_onednn_conv"):
        return CATEGORIES[0]
    return CATEGORIES[3] if op.startswith("ynn_fusion") else CATEGORIES[4]


def op_kind(op: str) -> str:
    """``add_maximum_fusion.12`` -> ``add_maximum_fusion``."""
    return re.sub(r"\.\d+$", "", op)


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def worker_ops(xplane_file: Path) -> list[tuple[str, float, float]]:
    """``(op, start_s, end_s)`` of every op on XLA's threads (:data:`WORKER_THREADS`) in an
    ``*.xplane.pb``."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as e:
        raise SystemExit("bench.profile_step reads the trace with TensorFlow's protobuf bindings:"
                         " pip install -e '.[data]' (tensorflow-cpu)") from e
    space = xplane_pb2.XSpace()
    space.ParseFromString(xplane_file.read_bytes())
    ops = []
    for plane in space.planes:
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            if not (line.name or line.display_name).startswith(WORKER_THREADS):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if not name or name.startswith(_NOT_OPS):
                    continue
                start = line.timestamp_ns * 1e-9 + event.offset_ps * 1e-12
                ops.append((name, start, start + event.duration_ps * 1e-12))
    return ops


def split(ops: list[tuple[str, float, float]], steps: int, wall_s: float,
          top: int = 12) -> dict[str, Any]:
    """Per-step figures of ``ops`` traced over ``steps`` steps that took ``wall_s``."""
    by_category: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    by_kind: collections.Counter[str] = collections.Counter()
    for op, a, b in ops:
        by_category[category(op)].append((a, b))
        by_kind[op_kind(op)] += b - a

    def ms(seconds: float) -> float:
        return round(1000 * seconds / steps, 3)

    return {
        "steps": steps,
        "step_ms": ms(wall_s),
        "busy_ms": ms(union_seconds([(a, b) for _, a, b in ops])),
        "conv_wall_ms": ms(union_seconds([iv for c in CATEGORIES[:3] for iv in by_category[c]])),
        "thread_ms": {c: ms(sum(b - a for a, b in by_category[c])) for c in CATEGORIES},
        "wall_ms": {c: ms(union_seconds(by_category[c])) for c in CATEGORIES},
        "top_op_kinds_thread_ms": {k: ms(s) for k, s in by_kind.most_common(top)},
    }


def _step_ms(step, steps: int) -> float:
    """Median ms a call of ``step`` over 3 samples of ``steps`` untraced calls."""
    return 1000 * timing.time_calls(step, repeats=3, number=steps).median_s


def profile(name: str, steps: int, tiny: bool = False) -> dict[str, Any]:
    """Trace ``steps`` warm steps of the suite's workload ``name`` and split them."""
    w = workloads.train_workload(name, tiny)
    built = train_step.engine_step(w.model, w.batch, w.image_shape, augment=False)
    for _ in range(3):  # compile, then settle
        jax.block_until_ready(built.step())
    untraced_ms = _step_ms(built.step, steps)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            start = time.perf_counter()
            for _ in range(steps):
                jax.block_until_ready(built.step())
            wall = time.perf_counter() - start
        files = sorted(Path(tmp).rglob("*.xplane.pb"))
        if not files:
            raise RuntimeError(f"jax.profiler.trace wrote no *.xplane.pb under {tmp}")
        ops = worker_ops(files[-1])
    if not ops:
        names = " or ".join(f"{t}*" for t in WORKER_THREADS)
        raise RuntimeError(f"no ops on threads named {names} in the trace: this backend's "
                           "threads are named otherwise (CPU only)")
    return {**w.describe(), **split(ops, steps, wall), "untraced_step_ms": round(untraced_ms, 3)}


def torch_category(op: str) -> str | None:
    """``"conv"`` or ``"other"`` for an aten op of the torch step's profile, None for the
    autograd engine's and the profiler's bookkeeping (not ops)."""
    if not op.startswith("aten::"):
        return None
    return "conv" if "conv" in op else "other"


def profile_torch(name: str, steps: int, layout: str, tiny: bool = False) -> dict[str, Any]:
    """The torch twin's step (``layout``: ``channels_last`` or ``contiguous``): its untraced ms
    and, from ``torch.profiler`` over ``steps`` steps, the share of its op time in convolutions
    (forward, and the backward that gives both gradients) and in everything else."""
    if not torch_models.torch_available():
        raise SystemExit("--torch needs PyTorch: pip install -e '.[bench]'")
    import torch.profiler

    step, setting = torch_models.torch_step(workloads.train_workload(name, tiny),
                                            channels_last=layout == "channels_last")
    for _ in range(3):
        step()
    step_ms = _step_ms(step, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    own_ms: collections.Counter[str] = collections.Counter()
    for event in prof.key_averages():
        kind = torch_category(event.key)
        if kind is not None:
            own_ms[kind] += event.self_cpu_time_total / 1000 / steps
    total = sum(own_ms.values())
    if total <= 0:
        raise RuntimeError("torch.profiler recorded no aten ops for the torch step")
    return {"layout": layout, "step_ms": round(step_ms, 3), "setting": setting,
            "profiled_op_ms": {k: round(v, 3) for k, v in own_ms.items()},
            "conv_share": round(own_ms["conv"] / total, 4),
            "conv_ms": round(step_ms * own_ms["conv"] / total, 3)}


def against_torch(ours: dict[str, Any], ours_step_ms: float,
                  torch_side: dict[str, Any]) -> dict[str, float]:
    """What bounds torch's step time over ours (above 1: ours is faster): as timed, if our ops
    other than convs took no time, and if our convs took torch's conv time."""
    conv_ms = ours_step_ms * ours["conv_wall_ms"] / ours["step_ms"]  # the traced share, untraced
    others_ms = ours_step_ms - conv_ms
    return {"as_timed": round(torch_side["step_ms"] / ours_step_ms, 3),
            "ours_convs_only": round(torch_side["step_ms"] / conv_ms, 3),
            "ours_with_torch_conv_time": round(
                torch_side["step_ms"] / (torch_side["conv_ms"] + others_ms), 3)}


def format_split(result: dict[str, Any]) -> str:
    """The split as a small table."""
    lines = [f"{result['model']}, batch {result['batch']}: {result['step_ms']:.2f} ms a step "
             f"while traced; ops ran {result['busy_ms']:.2f} ms of it, oneDNN convs "
             f"{result['conv_wall_ms']:.2f} ms",
             f"{'category':32s} {'thread ms':>10s} {'wall ms':>10s}"]
    lines += [f"{c:32s} {result['thread_ms'][c]:10.2f} {result['wall_ms'][c]:10.2f}"
              for c in CATEGORIES]
    lines.append("longest op kinds (thread ms a step): " + ", ".join(
        f"{k} {v:.2f}" for k, v in result["top_op_kinds_thread_ms"].items()))
    if "torch" in result:
        t, bound = result["torch"], result["torch_over_ours"]
        lines += [f"untraced: ours {result['untraced_step_ms']:.2f} ms a step, torch "
                  f"({t['layout']}) {t['step_ms']:.2f} ms, {100 * t['conv_share']:.0f} % of its "
                  f"op time in convolutions ({t['conv_ms']:.2f} ms)",
                  f"torch / ours: {bound['as_timed']:.3f} as timed; "
                  f"{bound['ours_convs_only']:.3f} if our other ops took no time; "
                  f"{bound['ours_with_torch_conv_time']:.3f} if our convs took torch's time"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet20", choices=tuple(workloads.TRAIN_STEPS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (figures claim nothing)")
    p.add_argument("--torch", default=None, choices=torch_models.LAYOUTS,
                   help="also profile the torch twin's step in this layout, and bound the ratio")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.torch and not torch_models.torch_available():
        p.error("--torch needs PyTorch: pip install -e '.[bench]'")
    result = {**profile(args.model, args.steps, args.tiny), "machine": report.machine_info()}
    if args.torch:
        # its own process, as the suite's workers: no JAX thread pool beside torch's OpenMP one
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            result["torch"] = pool.apply(profile_torch,
                                         (args.model, args.steps, args.torch, args.tiny))
        result["torch_over_ours"] = against_torch(result, result["untraced_step_ms"],
                                                  result["torch"])
    print(format_split(result))
    return report.write_result(result, args.out)


if __name__ == "__main__":
    main()
