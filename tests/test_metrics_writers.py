"""Metric writers: JSON lines keep results apart from timings and survive resumes; TensorBoard
event files are valid TFRecords that TensorBoard parses; W&B is optional and named by its extra;
the multi-writer fans out and always closes; the epoch loop logs lr, sparsity and timing once
per epoch; ``config.logging`` never changes a run's identity."""

import importlib.util
import json
import logging
import struct
import sys
import types
from pathlib import Path

import jax
import optax
import pytest
from conftest import synthetic_dataset

from signticket import metrics as metrics_lib
from signticket import optim
from signticket.checkpoint import config_hash, run_dir, run_identity
from signticket.errors import UserError
from signticket.fit import fit
from signticket.masks import random_mask, sparsity
from signticket.metrics import (
    TIMING_KEYS,
    MetricsWriter,
    MetricWriter,
    MissingExtraError,
    MultiWriter,
    TensorBoardWriter,
    make_writer,
    read_tfrecords,
    writer_names,
)
from signticket.sharding import make_mesh
from signticket.train import Engine

sys.path.insert(0, str(Path(__file__).parent))
from _engine_run import TinyNet

HAS_TF = importlib.util.find_spec("tensorflow") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def _record(epoch, **extra):
    return {"epoch": epoch, "step": 6 * epoch, "train_loss": 1.0 / epoch, "lr": 0.1,
            "epoch_time_s": 2.0, "step_time_ms": 333.0, "images_per_s": 48.0, **extra}


# --- JSON lines --------------------------------------------------------------------------------


def test_jsonl_keeps_timings_out_of_the_results_file(tmp_path):
    w = MetricsWriter(tmp_path / "metrics.jsonl", tmp_path / "timing.jsonl")
    for e in (1, 2, 3):
        w.write(_record(e))
    results = w.read()
    assert [r["epoch"] for r in results] == [1, 2, 3]
    assert not any(k in r for r in results for k in TIMING_KEYS)  # resume-identical file
    timing = [json.loads(x) for x in (tmp_path / "timing.jsonl").open()]
    assert timing[0] == {"epoch": 1, "step": 6, "epoch_time_s": 2.0, "step_time_ms": 333.0,
                         "images_per_s": 48.0}
    w.truncate_after(1)  # a resume from epoch 1 forgets both histories past it
    assert [r["epoch"] for r in w.read()] == [1]
    assert [json.loads(x)["epoch"] for x in (tmp_path / "timing.jsonl").open()] == [1]


def test_jsonl_without_timing_path_drops_timings(tmp_path):
    w = MetricsWriter(tmp_path / "metrics.jsonl")
    w.write(_record(1))
    assert set(w.read()[0]) == {"epoch", "step", "train_loss", "lr"}
    assert list(tmp_path.iterdir()) == [tmp_path / "metrics.jsonl"]


def test_every_writer_satisfies_the_protocol(tmp_path):
    for w in (MetricsWriter(tmp_path / "m.jsonl"), TensorBoardWriter(tmp_path / "tb"),
              MultiWriter([])):
        assert isinstance(w, MetricWriter)


# --- TensorBoard -------------------------------------------------------------------------------


def test_crc32c_known_answer():
    # The CRC-32C check value (RFC 3720, appendix B.4) and the empty string.
    assert metrics_lib.crc32c(b"123456789") == 0xE3069283
    assert metrics_lib.crc32c(b"") == 0


def _decode(msg: bytes) -> dict:
    """A minimal protobuf decoder: {field: [values]} (varint, fixed64, bytes, fixed32)."""
    out, i = {}, 0
    while i < len(msg):
        key, i = _read_varint(msg, i)
        field, kind = key >> 3, key & 7
        if kind == 0:
            value, i = _read_varint(msg, i)
        elif kind == 1:
            value, i = struct.unpack_from("<d", msg, i)[0], i + 8
        elif kind == 5:
            value, i = struct.unpack_from("<f", msg, i)[0], i + 4
        else:
            n, i = _read_varint(msg, i)
            value, i = msg[i:i + n], i + n
        out.setdefault(field, []).append(value)
    return out


def _read_varint(b, i):
    shift = result = 0
    while True:
        byte = b[i]
        result |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return result, i


def _events(path):
    """(step, {tag: value}, session_start) per event after the file-version event."""
    records = read_tfrecords(path)  # checksums verified
    assert _decode(records[0])[3] == [b"brain.Event:2"]
    out = []
    for rec in records[1:]:
        ev = _decode(rec)
        scalars = {}
        for value in _decode(ev[5][0]).get(1, []) if 5 in ev else []:
            v = _decode(value)
            scalars[v[1][0].decode()] = v[2][0]
        out.append((ev[2][0], scalars, 7 in ev))
    return out


def test_tensorboard_event_file_holds_every_scalar_at_its_epoch(tmp_path):
    w = TensorBoardWriter(tmp_path / "tb")
    w.write(_record(1, test_accuracy=0.5, note="not a number", flag=True))
    w.write(_record(2, test_accuracy=0.75))
    w.close()
    (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = _events(path)
    assert [step for step, _, _ in events] == [1, 2]
    assert events[1][1]["test_accuracy"] == 0.75 and events[0][1]["images_per_s"] == 48.0
    assert "note" not in events[0][1] and "flag" not in events[0][1]  # only numbers
    assert "epoch" not in events[0][1] and "step" not in events[0][1]  # they are the x-axis


def test_tensorboard_resume_purges_the_redone_epochs(tmp_path):
    first = TensorBoardWriter(tmp_path / "tb")
    for e in (1, 2, 3):
        first.write(_record(e))
    first.close()
    second = TensorBoardWriter(tmp_path / "tb")  # the resumed process, from epoch 1
    second.truncate_after(1)
    second.write(_record(2))
    second.close()
    assert second.path != first.path  # each process appends its own file
    events = _events(second.path)
    assert events[0] == (2, {}, True)  # SessionLog.START at step 2: TB drops steps >= 2 before
    assert events[1][0] == 2


@pytest.mark.skipif(not HAS_TF, reason="tensorflow not installed (cross-check of the format)")
def test_tensorflow_reads_our_event_files(tmp_path):
    tf = pytest.importorskip("tensorflow")
    w = TensorBoardWriter(tmp_path / "tb")
    w.truncate_after(0)
    w.write(_record(1, test_accuracy=0.25))
    w.close()
    (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = list(tf.compat.v1.train.summary_iterator(str(path)))
    assert events[0].file_version == "brain.Event:2"
    assert events[1].session_log.status == events[1].session_log.START and events[1].step == 1
    assert events[2].step == 1
    values = {v.tag: v.simple_value for v in events[2].summary.value}
    assert values["test_accuracy"] == 0.25 and values["train_loss"] == 1.0


# --- W&B ---------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_WANDB, reason="wandb is installed: nothing missing to report")
def test_wandb_missing_names_the_extra(tmp_path):
    with pytest.raises(MissingExtraError, match=r"signticket\[wandb\]"):
        make_writer(tmp_path / "run-abc", {"writers": ("jsonl", "wandb")})


def test_wandb_writer_logs_at_epoch_and_resumes_the_same_run(tmp_path, monkeypatch):
    """Against a stand-in ``wandb`` module: the calls the writer makes."""
    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    w = make_writer(tmp_path / "train-abc123", {"writers": ("wandb",), "wandb_project": "p"},
                    config={"seed": 0})
    w.truncate_after(0)
    assert calls == []  # a reused finished run writes nothing and starts no W&B run
    w.write(_record(3))
    w.close()
    (_, kwargs), (_, data, step), (finish,) = calls
    assert kwargs["id"] == "train-abc123" and kwargs["resume"] == "allow"
    assert kwargs["project"] == "p" and kwargs["config"] == {"seed": 0}
    assert step == 3 and data["images_per_s"] == 48.0 and "epoch" not in data
    assert finish == "finish"


# --- composition and choice by config ----------------------------------------------------------


class _Spy:
    def __init__(self, name, log, fail_close=False):
        self.name, self.log, self.fail_close = name, log, fail_close

    def write(self, record):
        self.log.append((self.name, "write", record["epoch"]))

    def truncate_after(self, epoch):
        self.log.append((self.name, "truncate", epoch))

    def close(self):
        self.log.append((self.name, "close"))
        if self.fail_close:
            raise OSError(f"{self.name} failed")


def test_multiwriter_fans_out_in_order_and_closes_all_despite_a_failure():
    log = []
    w = MultiWriter([_Spy("a", log, fail_close=True), _Spy("b", log)])
    w.truncate_after(2)
    w.write({"epoch": 3})
    with pytest.raises(OSError, match="a failed"):
        w.close()
    assert log == [("a", "truncate", 2), ("b", "truncate", 2), ("a", "write", 3),
                   ("b", "write", 3), ("a", "close"), ("b", "close")]


def test_writer_names_default_and_errors():
    assert writer_names(None) == writer_names({}) == ("jsonl",)
    assert writer_names({"writers": "tensorboard"}) == ("tensorboard",)
    with pytest.raises(UserError, match=r"unknown writer 'tb'.*jsonl, tensorboard, wandb"):
        writer_names({"writers": ("jsonl", "tb")})
    with pytest.raises(UserError, match="twice"):
        writer_names({"writers": ("jsonl", "jsonl")})


def test_make_writer_builds_the_named_writers_in_the_run_dir(tmp_path):
    w = make_writer(tmp_path, {"writers": ("jsonl", "tensorboard")})
    w.write(_record(1))
    w.close()
    assert [type(x) for x in w.writers] == [MetricsWriter, TensorBoardWriter]
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "timing.jsonl").exists()
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


def test_logging_config_is_not_part_of_a_runs_identity(tmp_path):
    """Choosing writers reuses the run directory; a config without ``logging`` keeps the hash
    it had before the key existed (the default train config's hash is pinned)."""
    from signticket.configs import train

    base = {"seed": 0, "model": {"name": "mlp"}}
    a = run_dir(tmp_path, base, "train")
    b = run_dir(tmp_path, {**base, "logging": {"writers": ["jsonl", "tensorboard"]}}, "train")
    assert a == b and a.name == f"train-{config_hash(base)}"
    # The hash of the default config before `logging` was added to it (commit 0d999b4).
    assert config_hash(run_identity(train.get_config())) == "5f41c82bb682"


def test_unknown_writer_fails_before_any_run_dir(tmp_path):
    from signticket.configs import train
    from signticket.runs import check_run_config

    cfg = train.get_config()
    cfg.logging.writers = ("jsonl", "csv")
    with pytest.raises(UserError, match="unknown writer 'csv'"):
        check_run_config(cfg, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


# --- the epoch loop ----------------------------------------------------------------------------

EPOCHS, BATCH, N = 3, 16, 96  # 6 steps per epoch


def _fit_tiny(directory, tx, mask=None, progress=False, learning_rate=None, **kwargs):
    ds = synthetic_dataset(N, 40, flip=True)
    engine = Engine(TinyNet(), tx, ds.preprocess, make_mesh())
    state = engine.init_state(jax.random.PRNGKey(0), ds.train_images)
    if mask is not None:
        state = engine.place(state.replace(opt_state=optim.set_mask(state.opt_state, mask)))
    writer = MetricsWriter(directory / "metrics.jsonl", directory / "timing.jsonl")
    fit(engine, state, ds, epochs=EPOCHS, batch_size=BATCH, metrics=writer, progress=progress,
        learning_rate=learning_rate, desc="tiny", **kwargs)
    timing = [json.loads(x) for x in (directory / "timing.jsonl").open()]
    return state, writer.read(), timing


def test_fit_records_lr_sparsity_and_timing_per_epoch(tmp_path, caplog):
    schedule = optax.cosine_decay_schedule(0.1, EPOCHS * N // BATCH)
    tx = optim.masked(optim.sgd(schedule, 0.9))
    ds = synthetic_dataset(N, 40)
    params = Engine(TinyNet(), tx, ds.preprocess).init_variables(
        jax.random.PRNGKey(0), ds.train_images)["params"]
    mask = random_mask(jax.random.PRNGKey(1), params, 0.5)
    caplog.set_level(logging.INFO, logger="signticket.fit")
    _, records, timing = _fit_tiny(tmp_path, tx, mask, learning_rate=schedule)
    steps = N // BATCH
    for e, r in enumerate(records, start=1):
        assert r["step"] == e * steps
        # The learning rate of the epoch's last step, not of the next one.
        assert r["lr"] == pytest.approx(float(schedule(e * steps - 1)))
        assert r["sparsity"] == pytest.approx(float(sparsity(mask).overall))
        assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy"} <= set(r)
    assert records[0]["lr"] > records[-1]["lr"] > 0
    assert [t["epoch"] for t in timing] == [1, 2, 3]
    for t in timing:
        assert t["images_per_s"] == pytest.approx(steps * BATCH / t["epoch_time_s"])
        assert t["step_time_ms"] == pytest.approx(1e3 * t["epoch_time_s"] / steps)
    lines = [r.getMessage() for r in caplog.records if r.name == "signticket.fit"]
    epoch_lines = [x for x in lines if x.startswith("tiny epoch")]
    assert len(epoch_lines) == EPOCHS
    assert "tiny epoch 2/3" in epoch_lines[1] and "lr " in epoch_lines[1]
    assert "sparsity 0.5" in epoch_lines[1] and "img/s" in epoch_lines[1]


def test_fit_records_the_mask_each_epoch_trained_under(tmp_path):
    """A hook that prunes after epoch 1 (as IMP / RiGL do between epochs): epoch 1 reports the
    dense mask it trained under, the later epochs the pruned one."""
    tx = optim.masked(optim.sgd(0.05, 0.9))
    ds = synthetic_dataset(N, 40)
    params = Engine(TinyNet(), tx, ds.preprocess).init_variables(
        jax.random.PRNGKey(0), ds.train_images)["params"]
    pruned = random_mask(jax.random.PRNGKey(1), params, 0.75)

    def prune_after_first(epoch, state):
        if epoch != 1:
            return state
        return state.replace(opt_state=optim.set_mask(state.opt_state, pruned))

    _, records, _ = _fit_tiny(tmp_path, tx, on_epoch_end=prune_after_first)
    assert [r["sparsity"] for r in records] == pytest.approx([0.0, 0.75, 0.75], abs=0.01)


def test_fit_without_mask_or_schedule_records_neither(tmp_path, caplog):
    tx = optim.sgd(0.05, 0.9)  # no masked(): no mask to report
    caplog.set_level(logging.INFO, logger="signticket.fit")
    _, records, _ = _fit_tiny(tmp_path / "a", tx, progress=True)
    assert not any("sparsity" in r or "lr" in r for r in records)
    # Progress bars on: no epoch log lines (the bar shows the epoch).
    assert not any(r.getMessage().startswith("tiny epoch") for r in caplog.records)
    # A constant learning rate is logged as given; a dense mask is sparsity 0.
    _, records, _ = _fit_tiny(tmp_path / "b", optim.masked(tx), learning_rate=0.05)
    assert [r["lr"] for r in records] == [0.05] * EPOCHS
    assert [r["sparsity"] for r in records] == [0.0] * EPOCHS


def test_fit_times_epochs_not_steps(tmp_path, monkeypatch):
    """The timer is read twice per epoch, however many steps: timing adds no per-step work
    (a per-step time would need a host sync per step to mean anything)."""
    import signticket.fit as fit_mod

    reads = []
    real = fit_mod.time.perf_counter
    monkeypatch.setattr(fit_mod.time, "perf_counter", lambda: reads.append(1) or real())
    _fit_tiny(tmp_path, optim.masked(optim.sgd(0.05, 0.9)))
    assert len(reads) == 2 * EPOCHS


def test_train_run_writes_the_configured_writers_with_the_config_schedule(tmp_path, caplog):
    """End to end through ``train_run``: jsonl + tensorboard from ``config.logging``, the
    learning rate of ``config.optimizer``'s schedule, and a second run with other writers
    reuses the same directory (logging is not part of the run's identity)."""
    from ml_collections import ConfigDict

    from signticket import provenance
    from signticket.runs import build_schedule, train_run

    cfg = ConfigDict({
        "seed": 0, "data_seed": 0, "epochs": 2, "batch_size": BATCH, "eval_every": 1,
        "checkpoint_every": 1, "model": {"name": "mlp", "kwargs": {"widths": (8,)}},
        "data": {"name": "synthetic"},
        "optimizer": {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9,
                      "weight_decay": 0.0, "schedule": "cosine"},
        "logging": {"writers": ("jsonl", "tensorboard")},
    })
    ds = synthetic_dataset(N, 40)
    res = train_run(cfg, ds, runs_root=tmp_path, progress=False)
    records = MetricsWriter(res.directory / "metrics.jsonl").read()
    schedule = build_schedule(cfg.optimizer, 2, N // BATCH)
    assert [r["lr"] for r in records] == pytest.approx(
        [float(schedule(e * N // BATCH - 1)) for e in (1, 2)])
    assert [r["sparsity"] for r in records] == [0.0, 0.0]  # dense: the full mask
    assert len(list((res.directory / "tb").glob("events.out.tfevents.*"))) == 1
    assert [json.loads(x)["epoch"] for x in (res.directory / "timing.jsonl").open()] == [1, 2]
    stored = json.loads((res.directory / "config.json").read_text())
    assert "logging" not in stored and provenance.PROVENANCE_KEY in stored
    cfg.logging.writers = ("jsonl",)
    again = train_run(cfg, ds, runs_root=tmp_path, progress=False)
    assert again.directory == res.directory and again.summary == pytest.approx(res.summary)
    assert MetricsWriter(res.directory / "metrics.jsonl").read() == records  # reused as is
