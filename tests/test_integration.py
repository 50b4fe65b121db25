"""Integration on the real, offline Fashion-MNIST: training accuracy and kill/resume of the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signticket import cli

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def test_convnet_reaches_80_percent_on_fashion_mnist_subset(tmp_path, capsys):
    code = cli.main([
        "train", "--runs-root", str(tmp_path), "--no-progress",
        "--config.data.train_subset=12000", "--config.data.test_subset=2000",
        "--config.epochs=6", "--config.optimizer.learning_rate=0.05",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out[out.index("{"):])
    assert summary["test_accuracy"] > 0.80, summary


def _train_cmd(runs_root):
    return [sys.executable, "-m", "signticket.cli", "train", "--runs-root", str(runs_root),
            "--no-progress", "--config.data.train_subset=3000", "--config.data.test_subset=500",
            "--config.epochs=4", "--config.batch_size=100"]


def test_killed_cli_run_resumes_and_matches_uninterrupted(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(_train_cmd(tmp_path / "killed"), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    ckpts = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed").glob("train-*/checkpoints/2"))
        if found:
            ckpts = found[0].parent
            break
        time.sleep(0.2)
    assert ckpts is not None, "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = ckpts.parent
    assert not (run_dir / "DONE.json").exists()
    resumed = subprocess.run(_train_cmd(tmp_path / "killed"), cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True, timeout=600)
    full = subprocess.run(_train_cmd(tmp_path / "full"), cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True, timeout=600)
    a = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    b = json.loads(full.stdout[full.stdout.index("{"):])
    assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3, 4]
