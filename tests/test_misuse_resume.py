"""A run killed at any moment (real SIGKILL / Ctrl-C of a ``signticket train`` subprocess) and
re-run ends byte-identical to an uninterrupted run: metrics.jsonl, DONE.json and the final
checkpoint's arrays. The same config twice in fresh roots is byte-identical too."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import chex
import pytest

from signticket import cli
from signticket.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parents[1]
ARGV = ["--no-progress", "--config.data.train_subset=512", "--config.data.test_subset=256",
        "--config.epochs=4", "--config.batch_size=64", "--config.model.kwargs.channels=(4,8)"]


def _train_in_process(runs_root: Path) -> Path:
    assert cli.main(["train", "--runs-root", str(runs_root), *ARGV]) == 0
    (run,) = runs_root.glob("train-*")
    return run


def _artifacts(run: Path) -> dict:
    """Everything a finished run leaves that must not depend on how it got there."""
    ckpt = Checkpointer(run)
    step = ckpt.latest_step()
    arrays = ckpt.manager.restore(step)  # the raw stored pytree, every array read back
    ckpt.close()
    return {"metrics": (run / "metrics.jsonl").read_bytes(),
            "done": (run / "DONE.json").read_bytes(), "step": step, "arrays": arrays}


def _assert_identical(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    assert a["done"] == b["done"]
    assert a["step"] == b["step"]
    chex.assert_trees_all_equal(a["arrays"], b["arrays"])  # exact, not close


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = _train_in_process(tmp_path_factory.mktemp("reference"))
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3, 4]
    return _artifacts(run)


def test_same_config_in_fresh_roots_is_byte_identical(reference, tmp_path):
    _assert_identical(_artifacts(_train_in_process(tmp_path)), reference)


MOMENTS = {
    "before_metrics:1": "killed in epoch 1: nothing on disk yet",
    "after_metrics:1": "epoch 1's record written, its checkpoint not",
    "mid_save:2": "while orbax writes epoch 2's checkpoint",
    "in_background_save:2": "while epoch 2's checkpoint is written and epoch 3 trains",
    "after_save:3": "right after epoch 3's checkpoint is committed",
    "finishing": "the run's last write under way in the background, DONE.json not yet",
    "sigint_after_metrics:2": "Ctrl-C after epoch 2's record",
}


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_interrupted_run_resumes_byte_identical(reference, tmp_path, moment):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_misuse_train.py"), moment, "--",
         "--runs-root", str(tmp_path), *ARGV],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if moment.startswith("sigint"):
        assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr, proc.stderr[-2000:]
    else:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (run,) = tmp_path.glob("train-*")
    assert not (run / "DONE.json").exists()
    _assert_identical(_artifacts(_train_in_process(tmp_path)), reference)
