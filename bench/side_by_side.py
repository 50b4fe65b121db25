"""Train steps of several variants timed side by side: one warm worker process per variant,
samples taken in turn.

    python -m bench.side_by_side --workload convnet --rounds 15
    python -m bench.side_by_side --workload resnet20 --variants signticket,torch_channels_last

Why workers: each variant keeps its own process (no JAX thread pool beside torch's OpenMP
threads, as in a suite child), stays compiled and warm between its samples, and the parent asks
each in turn for one sample of ``number`` steps (after :data:`WARM_S` seconds of untimed
ones; the order rotating every round,
:func:`bench.timing.alternate`). Sample ``i`` of every variant then comes from the same few
seconds, so a slow spell of the machine lands on all of them, and the paired ratio (median over
rounds of the per-round ratios, :func:`bench.timing.paired_speedup`) measures the variants, not
the minute each ran in. Separate child processes a minute apart moved one side's rate by up to
40 % between rounds on the 2-core VMs (docs/performance.md).

Variants: ``signticket`` (the engine's train step, :func:`bench.train_step.engine_step`, no
augmentation, as the suite's rows) and ``torch_contiguous`` / ``torch_channels_last`` (the
eager PyTorch step, :func:`bench.torch_models.torch_step`). A worker may get extra environment
variables (e.g. ``SIGNTICKET_CONV=xla``), so two ``signticket`` workers can compare a lever.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import report, timing, torch_models, workloads

VARIANTS = ("signticket", *(f"torch_{layout}" for layout in torch_models.LAYOUTS))
#: Prefix of the lines a worker writes for the parent (anything else on its stdout is ignored).
MARK = "@@side_by_side "
#: Seconds the parent waits between two samples: the previous worker's OpenMP threads stop
#: spinning before the next worker starts.
PAUSE_S = 0.05
#: Seconds of untimed steps a worker runs before each sample (:func:`bench.timing.sample`):
#: after idling through the other workers' samples, signticket's convnet step ran its first 3-4
#: steps ~11 ms slower each (the OS placing its woken threads; torch's step, whose threads do
#: not sleep mid-step, was not slowed), while training runs steps back to back.
WARM_S = 0.25
REPLY_TIMEOUT_S = 1800.0
REPO = Path(__file__).resolve().parent.parent


# -- the worker ----------------------------------------------------------------------------------

def _build(variant: str, workload: workloads.Workload
           ) -> tuple[Callable[[], Any], Callable[[timing.Timing], dict[str, Any]]]:
    """``(step, figures)``: the variant's ready-to-call step and what turns its timing into
    figures."""
    if variant == "signticket":
        from bench import train_step

        built = train_step.engine_step(workload.model, workload.batch, workload.image_shape,
                                       augment=False)
        return built.step, lambda t: train_step.engine_figures(built, t)
    layout = variant.removeprefix("torch_")
    step, setting = torch_models.torch_step(
        workload, channels_last=layout == "channels_last",
        flax_param_count=torch_models.flax_param_count(workload))
    return step, lambda t: torch_models.torch_figures(setting, t)


def _say(message: dict[str, Any]) -> None:
    print(MARK + json.dumps(message), flush=True)


def serve(variant: str, workload: workloads.Workload) -> None:
    """The worker: build and warm the step, then answer the parent's commands on stdin
    (``sample N``: seconds per step of N back-to-back steps; ``figures``: the figures of every
    sample taken; ``quit``)."""
    step, figures = _build(variant, workload)
    _, first = timing.timed(step)
    timing.block(step())  # one warm-up step, untimed
    _say({"ready": True, "first_s": first})
    samples: list[float] = []
    number = 1
    for line in sys.stdin:
        command, *args = line.split() or [""]
        if command == "sample":
            number, warm_s = int(args[0]), float(args[1]) if len(args) > 1 else 0.0
            samples.append(timing.sample(step, number, warm_s))
            _say({"seconds": samples[-1]})
        elif command == "figures" and samples:
            _say({"figures": figures(timing.Timing.from_samples(first, samples, number))})
        elif command == "quit":
            return
        else:
            _say({"error": f"cannot answer {line.strip()!r}"})


# -- the parent ----------------------------------------------------------------------------------

class Worker:
    """One variant's worker process, started and warm (its first step timed) on construction."""

    def __init__(self, variant: str, workload: str, *, tiny: bool = False,
                 env: Mapping[str, str] | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        self.variant = variant
        self._stderr = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, "-m", "bench.side_by_side", "--serve", variant,
               "--workload", workload, *(["--tiny"] if tiny else [])]
        self._proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})},
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True, bufsize=1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.first_s = float(self._reply("ready")["first_s"])

    def _read(self) -> None:
        for line in self._proc.stdout:
            if line.startswith(MARK):
                self._lines.put(line[len(MARK):])
        self._lines.put(None)  # the worker closed its stdout: it ended

    def _reply(self, key: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            line = None
        message = json.loads(line) if line is not None else {}
        if key not in message:
            self._stderr.seek(0)
            stderr = self._stderr.read()[-2000:]
            self.close()
            raise RuntimeError(f"side-by-side worker {self.variant!r} gave no {key!r} "
                               f"({message.get('error', 'it ended or timed out')}); its stderr "
                               f"ends: {stderr}")
        return message

    def _ask(self, command: str, key: str) -> Any:
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._reply(key)[key]

    def sample(self, number: int, warm_s: float = 0.0) -> float:
        """Seconds per step of ``number`` back-to-back steps, measured in the worker after
        ``warm_s`` seconds of untimed ones."""
        return float(self._ask(f"sample {number} {warm_s}", "seconds"))

    def figures(self) -> dict[str, Any]:
        """The worker's figures over every sample it took (its medians, compile time, ...)."""
        return self._ask("figures", "figures")

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write("quit\n")
                self._proc.stdin.flush()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()


@dataclasses.dataclass(frozen=True)
class SideBySide:
    """What :func:`measure` measured: ``timings[name]`` (the parent's record of each variant's
    samples, in rounds) and ``figures[name]`` (each worker's own figures of the same samples)."""

    timings: dict[str, timing.Timing]
    figures: dict[str, dict[str, Any]]

    def paired(self, base: str, other: str) -> float:
        """``other``'s speed-up over ``base`` (> 1: ``other`` is faster), paired by round."""
        return timing.paired_speedup(self.timings[base], self.timings[other])


def measure(workload: str, variants: Sequence[str] | Mapping[str, str], *, rounds: int,
            number: int, tiny: bool = False, envs: Mapping[str, Mapping[str, str]] | None = None,
            pause_s: float = PAUSE_S, warm_s: float = WARM_S) -> SideBySide:
    """Time ``workload``'s train step in every variant, side by side: the workers start one
    after another (so no compilation overlaps another), then ``rounds`` rounds of one sample
    of ``number`` steps from each, after ``warm_s`` seconds of its untimed steps.
    ``variants``: variant names, or ``{name: variant}`` to run one variant twice under other
    names (with ``envs[name]``: extra environment variables)."""
    if rounds < 1 or number < 1:
        raise ValueError(f"need rounds >= 1, number >= 1; got {rounds}, {number}")
    named = dict(variants) if isinstance(variants, Mapping) else {v: v for v in variants}
    if not named:
        raise ValueError("side_by_side.measure: no variants")
    workers: dict[str, Worker] = {}
    try:
        for name, variant in named.items():
            workers[name] = Worker(variant, workload, tiny=tiny, env=(envs or {}).get(name))

        def sampler(worker: Worker) -> Callable[[], float]:
            def one() -> float:
                time.sleep(pause_s)
                return worker.sample(number, warm_s)
            return one

        samples = timing.alternate({n: sampler(w) for n, w in workers.items()}, rounds)
        figures = {name: w.figures() for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    timings = {name: timing.Timing.from_samples(workers[name].first_s, s, number)
               for name, s in samples.items()}
    return SideBySide(timings, figures)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workload", default="convnet", help="resnet20, convnet or vgg11")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--number", type=int, default=None,
                   help="steps per sample (default: the suite's, bench.workloads.TRAIN_STEPS)")
    p.add_argument("--warm-s", type=float, default=WARM_S,
                   help="seconds of untimed steps before each sample (0: none)")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    p.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)  # a worker
    p.add_argument("--out", default="bench/results/side_by_side.json")
    args = p.parse_args(argv)
    workload = workloads.train_workload(args.workload, args.tiny)  # rejects unknown names
    if args.serve:
        serve(args.serve, workload)
        return {}
    variants = [v for v in args.variants.split(",") if v]
    number = args.number or workloads.train_steps(args.workload, args.tiny)[0]
    m = measure(args.workload, variants, rounds=args.rounds, number=number, tiny=args.tiny,
                warm_s=args.warm_s)
    base = variants[0]
    result = {"workload": workload.describe(), "rounds": args.rounds, "steps_per_sample": number,
              "warm_s": args.warm_s,
              "figures": m.figures,
              "paired_speedup_of_first": {v: round(m.paired(v, base), 4) for v in variants[1:]}}
    for v in variants:
        print(f"{v:<22} {m.timings[v].rate(workload.batch):>10.1f} img/s (median)"
              + (f"   {base}'s paired speed-up over it: {m.paired(v, base):.3f}x"
                 if v != base else ""))
    return report.write_result(result, args.out)


if __name__ == "__main__":
    main()
