"""Two processes on localhost (CPU, gloo collectives) give the numbers of one process.

Each process owns one CPU device; the mesh spans both, so every global batch is split across
processes, BatchNorm statistics and gradients are reduced across them, checkpoints go through
orbax's multi-process save, and only process 0 writes the run's files.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "_multihost_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(runs_root: Path, *dist: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                "")]))
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(var, None)
    return subprocess.Popen([sys.executable, str(WORKER), str(runs_root), *dist], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict | None:
    out, err = proc.communicate(timeout=280)
    assert proc.returncode == 0, err[-4000:]
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    return json.loads(lines[0][len("RESULT "):]) if lines else None


def test_two_processes_match_one(tmp_path):
    port = _free_port()
    single = _start(tmp_path / "one")
    pair = [_start(tmp_path / "two", f"127.0.0.1:{port}", "2", str(i)) for i in range(2)]
    one = _result(single)
    two, silent = _result(pair[0]), _result(pair[1])
    assert silent is None  # only process 0 reports (and writes)
    assert (one["processes"], two["processes"], two["devices"]) == (1, 2, 2)
    # Clocks that disagree on whether a save is due: both processes follow process 0's.
    assert one["save_decisions"] == [[False, True]]
    assert two["save_decisions"] == [[False, True], [False, True]]
    # Same data order, same masks, same metrics: the global batch is the same batch whether
    # one process or two feed it; only the order of float reductions differs.
    assert two["remaining"] == one["remaining"] and two["mask_kept"] == one["mask_kept"]
    for key in ("train",):
        assert two[key] == pytest.approx(one[key], rel=1e-4)
    for a, b in zip(two["rounds"], one["rounds"], strict=True):
        assert a == pytest.approx(b, rel=1e-3)
    np.testing.assert_allclose(two["barrier_error"], one["barrier_error"], atol=1 / 128)
    np.testing.assert_allclose(two["barrier_loss"], one["barrier_loss"], rtol=1e-3)
    # Process 0 alone wrote the run files: one metrics history per run, one record per epoch.
    runs = sorted((tmp_path / "two").iterdir())
    assert [p.name.split("-")[0] for p in runs] == ["imp", "imp", "train"]
    for run in runs:
        assert (run / "DONE.json").is_file() and (run / "config.json").is_file()
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
        assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def test_cli_coordinator_settings(monkeypatch):
    from signticket import cli
    from signticket.errors import UserError

    args = cli.build_parser().parse_args(
        ["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "1", "list"])
    assert (args.coordinator, args.num_processes, args.process_id) == ("127.0.0.1:1234", 2, 1)
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert cli.init_distributed() is False  # no settings: a single process, nothing started
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    with pytest.raises(UserError, match="num-processes"):
        cli.init_distributed()
