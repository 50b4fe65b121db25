"""Team placement in the oneDNN library (``TeamPlacement`` in ``onednn_conv.cc``): each calling
thread's OpenMP team is pinned one member per allowed CPU, successive callers' teams start on
different CPUs, the caller gets its own CPU mask back after every call, and nothing is pinned
when the team is not one thread per CPU or when ``SIGNTICKET_CONV_PLACE_TEAMS=0``."""

import json
import os
import subprocess
import sys
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


def _probe(**env: str) -> dict:
    environ = {**os.environ, **env,
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True,
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
    assert report["reported"] == 1  # what native.conv.team_placement() tells the benchmarks
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
