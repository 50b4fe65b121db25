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
wall time any op ran, the step's wall time, and the op kinds that took longest. Writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from bench import report, train_step, workloads

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


def profile(name: str, steps: int, tiny: bool = False) -> dict[str, Any]:
    """Trace ``steps`` warm steps of the suite's workload ``name`` and split them."""
    w = workloads.train_workload(name, tiny)
    built = train_step.engine_step(w.model, w.batch, w.image_shape, augment=False)
    for _ in range(3):  # compile, then settle
        jax.block_until_ready(built.step())
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
    return {**w.describe(), **split(ops, steps, wall)}


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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet20", choices=tuple(workloads.TRAIN_STEPS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (figures claim nothing)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    result = {**profile(args.model, args.steps, args.tiny), "machine": report.machine_info()}
    print(format_split(result))
    return report.write_result(result, args.out)


if __name__ == "__main__":
    main()
