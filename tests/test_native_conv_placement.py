"""Team placement in the oneDNN library (``signticket/native/team_placement.h``): each calling
thread's OpenMP team is pinned one member per allowed CPU, successive callers' teams start on
different CPUs, the caller gets its own CPU mask back after every call, nothing is pinned when
the team is not one thread per CPU or when ``SIGNTICKET_CONV_PLACE_TEAMS=0``, and by default the
teams are unpinned while other processes load the CPUs (and pinned again when they stop)."""

import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signticket.native import conv as native_conv

pytestmark = [
    pytest.mark.skipif(not native_conv.available(),
                       reason=f"oneDNN convs unavailable: {native_conv.unavailable_reason()}"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="placement needs >= 2 CPUs"),
]

ROOT = Path(__file__).resolve().parents[1]

# Runs the testing hook from the main thread and then from a second thread, in a fresh process
# (pinning is per process and must not leak into the test session).
PROBE = """
import ctypes, json, os, threading
from signticket.native import build
lib = ctypes.cdll.LoadLibrary(str(build.library_path(build=False)[0]))
def team():
    before = sorted(os.sched_getaffinity(0))
    cpus = (ctypes.c_int * 64)()
    size = lib.signticket_conv_testing_team_cpus(cpus, 64)
    return {"before": before, "after": sorted(os.sched_getaffinity(0)), "team": cpus[:size]}
report = {"allowed": sorted(os.sched_getaffinity(0)), "main": team(), "main_again": team(),
          "reported": lib.signticket_conv_team_placement()}
worker = threading.Thread(target=lambda: report.update(second=team()))
worker.start()
worker.join()
print(json.dumps(report))
"""


def _probe(probe: str = PROBE, **env: str) -> dict:
    environ = {**os.environ, **env,
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], env=environ, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env_where_placement_applies() -> dict[str, str]:
    return {"SIGNTICKET_CONV_PLACE_TEAMS": "1",
            "OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))}


def test_each_team_is_one_member_per_cpu_and_callers_start_on_different_cpus():
    report = _probe(**_env_where_placement_applies())
    cpus, n = report["allowed"], len(report["allowed"])
    main, second = report["main"]["team"], report["second"]["team"]
    assert len(main) == len(second) == n
    first = cpus.index(main[0])
    assert main == [cpus[(first + i) % n] for i in range(n)]
    assert report["main_again"]["team"] == main  # the same team, still in place
    assert report["reported"] == 2  # "always": what native.conv.team_placement() reports
    second_first = cpus.index(second[0])
    assert second_first == (first + 1) % n
    assert second == [cpus[(second_first + i) % n] for i in range(n)]


def test_the_caller_gets_its_own_mask_back():
    report = _probe(**_env_where_placement_applies())
    for call in ("main", "main_again", "second"):
        assert report[call]["after"] == report[call]["before"] == report["allowed"], call


@pytest.mark.parametrize("env", [{"OMP_NUM_THREADS": "1"}, {"SIGNTICKET_CONV_PLACE_TEAMS": "0"}],
                         ids=["team-not-one-per-cpu", "turned-off"])
def test_nothing_is_pinned_when_placement_does_not_apply(env):
    report = _probe(**{**_env_where_placement_applies(), **env})
    assert report["reported"] == 0
    for call in ("main", "main_again", "second"):
        assert all(cpu == -1 for cpu in report[call]["team"]), (call, report[call])
        assert report[call]["after"] == report["allowed"], call


# The load check, judged on forced shares of the CPUs used by others: 0 -> pinned, 0.5 ->
# unpinned, 0.2 -> unchanged (between the thresholds), 0.05 -> pinned again, 0.2 -> unchanged.
SHARES = (0.0, 0.5, 0.2, 0.05, 0.2)
PROBE_UNDER_LOAD = PROBE.split("report = ")[0] + f"""
lib.signticket_conv_testing_force_others_share.argtypes = [ctypes.c_double]
report = {{"allowed": sorted(os.sched_getaffinity(0)),
          "reported": lib.signticket_conv_team_placement(), "calls": []}}
for share in {SHARES!r}:
    lib.signticket_conv_testing_force_others_share(share)
    report["calls"].append(team())
print(json.dumps(report))
"""


def test_by_default_teams_are_unpinned_while_others_load_the_cpus():
    report = _probe(PROBE_UNDER_LOAD,
                    **{**_env_where_placement_applies(), "SIGNTICKET_CONV_PLACE_TEAMS": "auto"})
    assert report["reported"] == 1  # "auto"
    pinned = [all(cpu >= 0 for cpu in call["team"]) for call in report["calls"]]
    unpinned = [all(cpu == -1 for cpu in call["team"]) for call in report["calls"]]
    assert pinned == [True, False, False, True, True], report["calls"]
    assert unpinned == [False, True, True, False, False], report["calls"]
    for call in report["calls"]:
        assert call["after"] == call["before"] == report["allowed"]


def _library() -> ctypes.CDLL:
    from signticket.native import build

    lib = ctypes.cdll.LoadLibrary(str(build.library_path(build=False)[0]))
    lib.signticket_conv_testing_others_share.restype = ctypes.c_double
    lib.signticket_conv_testing_others_share.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
        ctypes.c_double, ctypes.c_double, ctypes.c_double]
    lib.signticket_conv_testing_measure_others_share.restype = ctypes.c_double
    return lib


def _stat(*cpus: tuple[int, int, int]) -> bytes:
    """A /proc/stat text: an aggregate line, then per CPU (user, system, idle) ticks."""
    lines = ["cpu  1 2 3 4 5 6 7 8 0 0"]
    lines += [f"cpu{i} {user} 0 {system} {idle} 0 0 0 0 0 0"
              for i, (user, system, idle) in enumerate(cpus)]
    return ("\n".join(lines) + "\nintr 1 2 3\n").encode()


@pytest.mark.parametrize("cpus, self_s, expected", [
    ((0, 1), 1.0, 0.0),   # the CPUs' busy time was all this process's
    ((0, 1), 0.5, 0.25),  # 0.5 of 2 CPU-seconds was someone else's
    ((0, 1), 0.0, 0.5),
    ((2,), 0.0, 1.0),     # only the allowed CPUs' lines count
    ((0, 1), 3.0, 0.0),   # clamped to [0, 1]
    ((0, 7), 0.0, -1.0),  # a CPU without a line
])
def test_others_share_of_the_cpus_is_their_busy_time_less_this_process(cpus, self_s, expected):
    # Between the two texts, over 1 s at 100 ticks/s: cpu0 and cpu1 were busy 50 ticks each
    # (user 30 + system 20), cpu2 100 ticks.
    before = _stat((100, 10, 500), (200, 20, 600), (0, 0, 0))
    after = _stat((130, 30, 550), (230, 40, 650), (60, 40, 0))
    array = (ctypes.c_int * len(cpus))(*cpus)
    share = _library().signticket_conv_testing_others_share(before, after, array, len(cpus),
                                                            100.0, self_s, 1.0)
    assert share == pytest.approx(expected)


def test_a_real_load_is_measured_as_others_use_of_the_cpus():
    spin = [sys.executable, "-c", "while True: pass"]
    spinners = [subprocess.Popen(spin) for _ in os.sched_getaffinity(0)]
    try:
        time.sleep(0.3)
        share = _library().signticket_conv_testing_measure_others_share(600)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert share > 0.5  # one spinner per CPU: ~1.0 (0.25 makes teams unpin)
