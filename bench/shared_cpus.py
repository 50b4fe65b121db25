"""Two training processes sharing the CPUs: what pinned OpenMP teams cost or gain there.

    python -m bench.shared_cpus --workload convnet --rounds 10

The oneDNN library pins each conv-calling thread's OpenMP team one member per CPU, by default
only while no other process loads the CPUs (``signticket/native/team_placement.h``). A pinned
thread cannot move off a CPU that another process holds, so whether pinning helps or hurts when
two trainers share the machine is a measurement, not an argument; run it with
``SIGNTICKET_CONV_PLACE_TEAMS=1`` in the environment to compare always-pinned teams.

Four warm workers (:class:`bench.side_by_side.Worker`, the engine's train step of
``--workload``): two with teams placed as the environment says (the default), two with
``SIGNTICKET_CONV_PLACE_TEAMS=0``. Each round, the placed pair takes one sample *at the same
time* (each its ``number`` steps after its warm steps), then the unplaced pair, the order
rotating (:func:`bench.timing.alternate`). A pair's figure is its combined rate over the time
until *both* finished (``2 * batch / max(seconds per step)``): a process starved by the other
counts against its setting instead of finishing alone. The ratio is paired by round.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import report, side_by_side, timing, workloads
from signticket.native import conv as native_conv

#: the two settings compared, with the environment each pair of workers gets
SETTINGS = {"placed": {}, "off": {native_conv.ENV_PLACE_TEAMS: "0"}}
PAIR = ("a", "b")


def pair_seconds(seconds: tuple[float, float]) -> float:
    """Seconds per step of a pair's combined rate: two steps (one each) per the slower one's
    seconds per step, so that ``batch / pair_seconds`` is the pair's img/s."""
    return max(seconds) / 2


def measure(workload: str, *, rounds: int, number: int, tiny: bool = False,
            warm_s: float = side_by_side.WARM_S) -> dict[str, Any]:
    """Each setting's pair (:data:`SETTINGS`) of ``workload`` trainers sampled together,
    ``rounds`` rounds: figures per setting, the per-round figures and placed's speed-up over
    off, paired by round."""
    if rounds < 1 or number < 1:
        raise ValueError(f"need rounds >= 1, number >= 1; got {rounds}, {number}")
    workers: dict[tuple[str, str], side_by_side.Worker] = {}
    try:
        for setting, env in SETTINGS.items():  # one after another: no compilation overlaps
            for member in PAIR:
                workers[setting, member] = side_by_side.Worker("signticket", workload,
                                                               tiny=tiny, env=env)

        def together(setting: str) -> Callable[[], float]:
            def one() -> float:
                with ThreadPoolExecutor(len(PAIR)) as pool:
                    seconds = tuple(pool.map(
                        lambda m: workers[setting, m].sample(number, warm_s), PAIR))
                return pair_seconds(seconds)
            return one

        samples = timing.alternate({s: together(s) for s in SETTINGS}, rounds)
        placement = {s: workers[s, PAIR[0]].figures()["conv_team_placement"] for s in SETTINGS}
    finally:
        for w in workers.values():
            w.close()
    batch = workloads.train_workload(workload, tiny).batch
    timings = {s: timing.Timing.from_samples(0.0, samples[s], number) for s in SETTINGS}
    return {
        "workload": workload,
        "batch_per_process": batch,
        "rounds": rounds,
        "steps_per_sample": number,
        **{s: {"pair_img_per_s_median": round(timings[s].rate(batch), 1),
               "conv_team_placement": placement[s]} for s in SETTINGS},
        "per_round_pair_img_per_s": [{s: round(batch / samples[s][r], 1) for s in SETTINGS}
                                     for r in range(rounds)],
        "paired_ratio": round(timing.paired_speedup(timings["off"], timings["placed"]), 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="convnet", choices=tuple(workloads.TRAIN_STEPS))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--number", type=int, default=None,
                   help="steps per sample (default: the workload's)")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (figures claim nothing)")
    p.add_argument("--out", default="bench/results/shared_cpus.json")
    args = p.parse_args(argv)
    number = args.number or workloads.train_steps(args.workload, args.tiny)[0]
    result = {"machine": report.machine_info(),
              **measure(args.workload, rounds=args.rounds, number=number, tiny=args.tiny)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    placed, off = (result[s]["pair_img_per_s_median"] for s in ("placed", "off"))
    print(f"two {args.workload} trainers at once: placed {placed} vs off {off} img/s together, "
          f"paired {result['paired_ratio']:.3f}x -> {args.out}")
    return result


if __name__ == "__main__":
    main()
