"""Every CLI verb end to end at tiny scale, and every user mistake as one line (exit code 2),
before any training and without leaving a run directory behind; bugs keep their traceback."""

import errno
import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signticket import cli
from signticket.checkpoint import LOCK_FILE, Checkpointer, RunLockedError, lock_run_dir
from signticket.experiments import suite

ROOT = Path(__file__).resolve().parents[1]
# A run of seconds: 512 Fashion-MNIST images, a 2-stage convnet of width 4 and 8.
TINY_TRAIN = ["--no-progress", "--config.data.train_subset=512", "--config.data.test_subset=256",
              "--config.epochs=2", "--config.batch_size=64", "--config.model.kwargs.channels=(4,8)"]
# The Sign-In CPU table shrunk to one seed, one sparsity, two arms, one epoch.
TINY_SIGN_IN = ["--config.data.train_subset=256", "--config.data.test_subset=128",
                "--config.epochs=1", "--config.experiment.seeds=(0,)",
                "--config.experiment.sparsities=(0.9,)",
                "--config.experiment.arms=('random','sign_in')",
                "--config.experiment.hessian_batch=16", "--config.experiment.hessian_iters=1",
                "--config.eval_every=1", "--config.model.kwargs.channels=(4,8)"]


def _main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _run_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("*-*")) if root.is_dir() else []


# --- every verb, end to end ------------------------------------------------------------------


def test_train_end_to_end_then_reused(tmp_path, capsys):
    code, out, err = _main(capsys, "train", "--runs-root", str(tmp_path), *TINY_TRAIN)
    assert code == 0, err
    summary = json.loads(out[out.index("{"):])
    run = Path(summary["run_dir"])
    assert (run / "DONE.json").exists() and 0.0 <= summary["test_accuracy"] <= 1.0
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").open()] == [1, 2]
    metrics = (run / "metrics.jsonl").read_bytes()
    code, out, err = _main(capsys, "train", "--runs-root", str(tmp_path), *TINY_TRAIN)
    assert code == 0 and json.loads(out[out.index("{"):]) == summary
    assert (run / "metrics.jsonl").read_bytes() == metrics  # reused, not retrained


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """``signticket reproduce`` of a cpu-scale table, shrunk by overrides (the verb used to fail
    for every table: the results path was passed on as a str)."""
    root = tmp_path_factory.mktemp("reproduce")
    argv = ["reproduce", "sign-in-cifar10-resnet20", "--scale", "cpu", "--no-progress",
            "--results", str(root / "results"), "--runs-root", str(root / "runs"), *TINY_SIGN_IN]
    code = cli.main(argv)
    return root, code


def test_reproduce_end_to_end(reproduced, capsys):
    root, code = reproduced
    assert code == 0
    out = root / "results" / "sign_in" / "sign-in-cifar10-resnet20-cpu"
    assert (out / "results.json").exists() and (out / "experiment.json").exists()
    assert "| 90 % |" in (out / "table.md").read_text()
    done = list((root / "runs").rglob("DONE.json"))
    assert len(done) == 2  # the two arms


def test_tables_regenerates_the_reproduced_table(reproduced, capsys):
    root, code = reproduced
    assert code == 0
    code, out, err = _main(capsys, "tables", "--results", str(root / "results"))
    assert code == 0, err
    assert "Sign-In" in out and (root / "results" / "README.md").exists()


def test_list(capsys):
    code, out, _ = _main(capsys, "list")
    assert code == 0
    assert all(name in out for name in suite.TABLES)


def test_quickstart_end_to_end(tmp_path, capsys, monkeypatch):
    # The quickstart verb with its Sign-In stage only, shrunk (the three stages are exercised
    # by tests/test_suite.py through suite.quickstart).
    monkeypatch.setattr(suite, "QUICKSTART", (("sign_in", "quickstart_sign_in"),))
    tiny = [a[len("--config."):] for a in TINY_SIGN_IN if "arms" not in a]
    monkeypatch.setattr(suite, "quickstart",
                        functools.partial(suite.quickstart, overrides={"sign_in": tiny}))
    code, out, err = _main(capsys, "quickstart", "--no-progress", "--results",
                           str(tmp_path / "results"), "--runs-root", str(tmp_path / "runs"))
    assert code == 0, err
    assert "=== quickstart: the three tables ===" in out
    assert (tmp_path / "results" / "sign_in" / "results.json").exists()


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Only user errors become one line: a TypeError from our code propagates."""
    def broken():
        return "a" / "b"

    monkeypatch.setattr(suite, "list_tables", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(["list"])


# --- user mistakes: one line, exit code 2, no run directory -----------------------------------


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("signticket "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


BAD_VALUES = {
    "--config.eval_every=0": "eval_every",
    "--config.checkpoint_every=0": "checkpoint_every",
    "--config.checkpoint_min_interval_s=-1.0": "checkpoint_min_interval_s",
    "--config.model.kwargs.channels=(16,0,64)": "model.kwargs.channels",
    "--config.optimizer.momentum=-0.9": "optimizer.momentum",
    "--config.optimizer.weight_decay=-1e-4": "optimizer.weight_decay",
    "--config.optimizer.warmup_epochs=5": "warmup_epochs",
    "--config.optimizer.learning_rate=0": "optimizer.learning_rate",
    "--config.batch_size=0": "batch_size",
    "--config.epochs=-1": "epochs",
    "--config.optimizer.milestones=(0.75,0.5)": "milestones",
    "--config.optimizer.schedule='cosin'": "cosin",
    "--config.optimizer.name='adamw'": "adamw",
    "--config.model.kwargs.chanels=(4,8)": "chanels",
    "--config.epochs='three'": "epochs",
}


@pytest.mark.parametrize("override", sorted(BAD_VALUES))
def test_bad_value_fails_before_training_and_leaves_nothing(override, tmp_path, capsys):
    code, _, err = _main(capsys, "train", "--runs-root", str(tmp_path / "runs"), *TINY_TRAIN,
                         override)
    _one_line_error(code, err, BAD_VALUES[override])
    assert _run_dirs(tmp_path / "runs") == []


def test_subset_larger_than_the_split(tmp_path, capsys):
    code, _, err = _main(capsys, "train", "--runs-root", str(tmp_path / "runs"), *TINY_TRAIN,
                         "--config.data.test_subset=20000")
    _one_line_error(code, err, "subset of 20000", "only 10000")
    assert _run_dirs(tmp_path / "runs") == []


def test_batch_larger_than_the_training_set(tmp_path, capsys):
    code, _, err = _main(capsys, "train", "--runs-root", str(tmp_path / "runs"), *TINY_TRAIN,
                         "--config.batch_size=1024")
    _one_line_error(code, err, "batch_size 1024", "512 training examples")
    assert _run_dirs(tmp_path / "runs") == []


def test_config_file_with_syntax_error(tmp_path, capsys):
    f = tmp_path / "cfg.py"
    f.write_text("def get_config(:\n    pass\n")
    code, _, err = _main(capsys, "train", "--config", str(f), "--runs-root", str(tmp_path))
    _one_line_error(code, err, str(f), "syntax error", "line 1")


def test_reproduce_bad_override_value(tmp_path, capsys):
    code, _, err = _main(capsys, "reproduce", "sign-in-cifar10-resnet20", "--scale", "cpu",
                         "--runs-root", str(tmp_path / "runs"), "--results", str(tmp_path / "r"),
                         "--config.optimizer.momentum=1.5")
    _one_line_error(code, err, "optimizer.momentum")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r").exists()


def test_runs_root_is_a_file(tmp_path, capsys):
    root = tmp_path / "runs"
    root.write_text("not a directory")
    code, _, err = _main(capsys, "train", "--runs-root", str(root), *TINY_TRAIN)
    _one_line_error(code, err, str(root), "not a directory")
    code, _, err = _main(capsys, "train", "--runs-root", str(root / "sub"), *TINY_TRAIN)
    _one_line_error(code, err, str(root))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_runs_root_read_only(tmp_path, capsys):
    root = tmp_path / "ro"
    root.mkdir(mode=0o500)
    code, _, err = _main(capsys, "train", "--runs-root", str(root / "runs"), *TINY_TRAIN)
    _one_line_error(code, err, "not writable")


def test_full_disk_stops_after_the_failed_save_with_one_line(tmp_path, capsys, monkeypatch):
    saves = []

    def full(self, step, state, **kwargs):  # orbax's save itself fails, as on a full disk
        saves.append(step)
        self.manager.save = _raise_enospc
        return real_save(self, step, state, **kwargs)

    real_save = Checkpointer.save
    monkeypatch.setattr(Checkpointer, "save", full)
    code, _, err = _main(capsys, "train", "--runs-root", str(tmp_path), *TINY_TRAIN)
    _one_line_error(code, err, "no space left", "step 1")
    assert saves == [1]  # epoch 2 never trained on top of an unsaved epoch 1
    (run,) = _run_dirs(tmp_path)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").open()] == [1]
    assert not (run / "DONE.json").exists()


def _raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_run_dir_lock_in_one_process(tmp_path):
    with lock_run_dir(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunLockedError, match=f"{tmp_path}.*pid {os.getpid()}"):
            with lock_run_dir(tmp_path):
                pass
    with lock_run_dir(tmp_path):  # released on exit
        pass


def test_second_process_on_the_same_run_fails_fast_and_first_finishes(tmp_path):
    """Two real ``signticket train`` of one config: the second fails at once naming the run
    dir and the first's pid; the first finishes with one clean history and DONE.json."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = ["--runs-root", str(tmp_path), *TINY_TRAIN, "--config.epochs=4"]
    first = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_misuse_train.py"), "slow",
                              "--", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(tmp_path.glob("train-*/metrics.jsonl")):
            assert first.poll() is None, first.communicate()
            time.sleep(0.2)
        (run,) = _run_dirs(tmp_path)
        t0 = time.time()
        second = subprocess.run([sys.executable, "-m", "signticket.cli", "train", *argv],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second was checked"
        assert second.returncode == 2, second.stderr
        assert f"{run} is in use by pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr and time.time() - t0 < 120
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").open()] == [1, 2, 3, 4]
    assert json.loads((run / "DONE.json").read_text())["epoch"] == 4


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 300 KiB tmpfs: a real full disk after one checkpoint (needs root and mount)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk_is_one_line_and_resumes_after_freeing_space(small_tmpfs):
    """orbax on a really full disk: one line (none of orbax's thread tracebacks), the run
    stopped after the failed save, and it finishes once there is space."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "signticket.cli", "train", "--runs-root",
            str(small_tmpfs / "runs"), "--no-progress", "--config.data.train_subset=256",
            "--config.data.test_subset=128", "--config.epochs=3"]  # default width: ~200 KB
    full = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    _one_line_error(full.returncode, full.stderr, "no space left", "step")
    (run,) = _run_dirs(small_tmpfs / "runs")
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").open()]
    failed = int(re.search(r"checkpoint step (\d+)", full.stderr).group(1))
    # Stopped at the failed write: it ran while the next epoch trained, so at most that epoch
    # came after it; never finished.
    assert epochs[-1] <= failed + 1 and not (run / "DONE.json").exists()
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)], check=True)
    again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").open()] == [1, 2, 3]
    assert json.loads((run / "DONE.json").read_text())["epoch"] == 3


def test_every_shipped_config_is_valid():
    """The validation rejects nothing the project ships (paper, cpu and quickstart configs)."""
    from signticket import config as config_lib
    from signticket.configs import train as train_config

    config_lib.validate(train_config.get_config())
    files = sorted(p for p in suite.CONFIG_DIR.glob("*.py")
                   if not p.name.startswith("_") and "common" not in p.name)
    assert len(files) >= 10
    for path in files:
        config_lib.validate(config_lib.load_config_file(path))
