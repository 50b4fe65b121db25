"""Per-run metric writers: JSON lines (the default, safe across resumes), TensorBoard, W&B.

Every writer takes *records*: flat mappings of scalars with an integer ``"epoch"`` (the x-axis;
``"step"``, the optimizer step, rides along). A writer is anything with

* ``write(record)``: record one epoch;
* ``truncate_after(epoch)``: forget records of later epochs, which a resumed run redoes;
* ``close()``.

:class:`MultiWriter` fans one record out to several. :func:`make_writer` builds the writers a
run config names (``config.logging.writers``, default ``("jsonl",)``).

Records mix *results* (losses, accuracies, learning rate, sparsity: the same on every run of a
config, so a resumed run's ``metrics.jsonl`` equals an uninterrupted one's byte for byte) and
*timings* (:data:`TIMING_KEYS`, wall-clock measurements of this machine). The JSON-lines writer
keeps the two apart: timings go to their own file (``timing.jsonl``) or are dropped; TensorBoard
and W&B get both.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from signticket import errors
from signticket.errors import MissingExtraError, UserError  # noqa: F401  (re-exported)

#: Keys of a record that are wall-clock measurements rather than results of the run.
TIMING_KEYS = ("epoch_time_s", "step_time_ms", "images_per_s")

Record = Mapping[str, Any]


@runtime_checkable
class MetricWriter(Protocol):
    """What the epoch loop writes metrics to (see the module docstring)."""

    def write(self, record: Record) -> None: ...

    def truncate_after(self, epoch: int) -> None: ...

    def close(self) -> None: ...


# --- JSON lines ---------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut off by a kill; the epoch it described is redone
    return records


def _truncate_jsonl(path: Path, epoch: int) -> None:
    if not path.exists():
        return
    text = path.read_text()
    records = _read_jsonl(path)
    kept = [r for r in records if r.get("epoch", 0) <= epoch]
    whole = len(records) == len(text.splitlines()) and (not text or text.endswith("\n"))
    if len(kept) == len(records) and whole:
        return  # nothing to drop: leave the file byte for byte as it is
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def _append_jsonl(path: Path, record: Record) -> None:
    with path.open("a") as f:
        f.write(json.dumps(dict(record), default=float) + "\n")


class MetricsWriter:
    """Appends JSON records to ``path``; :meth:`truncate_after` drops records of epochs that a
    resumed run will redo, so the file never holds two histories.

    Timing keys (:data:`TIMING_KEYS`) of a record go to ``timing_path`` (with the record's epoch
    and step) when given, else nowhere: ``path`` holds only what the run computed."""

    def __init__(self, path: str | os.PathLike, timing_path: str | os.PathLike | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timing_path = None if timing_path is None else Path(timing_path)

    def write(self, record: Record) -> None:
        results = {k: v for k, v in record.items() if k not in TIMING_KEYS}
        _append_jsonl(self.path, results)
        timing = {k: record[k] for k in TIMING_KEYS if k in record}
        if self.timing_path is not None and timing:
            where = {k: record[k] for k in ("epoch", "step") if k in record}
            _append_jsonl(self.timing_path, {**where, **timing})

    def read(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.path)

    def truncate_after(self, epoch: int) -> None:
        """Keep only records of epochs ``<= epoch`` (records without an epoch count as 0), and
        drop a last line cut short by a kill."""
        _truncate_jsonl(self.path, epoch)
        if self.timing_path is not None:
            _truncate_jsonl(self.timing_path, epoch)

    def close(self) -> None:
        pass  # every write is appended and closed at once: a kill loses at most one line


# --- TensorBoard event files, without TensorFlow or tensorboard ---------------------------------
#
# An event file is a TFRecord stream of ``Event`` protocol buffers. Scalars need four message
# fields, so they are encoded here by hand (about forty lines) instead of making TensorFlow,
# tensorboard or tensorboardX a dependency of logging: the format has been frozen since 2016.
#   Event:        wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
#                 summary = 5 (Summary), session_log = 7 (SessionLog)
#   Summary:      value = 1 (repeated Value);  Value: tag = 1 (string), simple_value = 2 (float)
#   SessionLog:   status = 1 (enum; START = 1)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord framing."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf encodes negatives
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings and sub-messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           scalars: Mapping[str, float] | None = None, session_start: bool = False) -> bytes:
    msg = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        msg += _field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
            for tag, value in scalars.items())
        msg += _field(5, values)
    if session_start:
        msg += _field(7, b"\x08\x01")
    return msg


def _tfrecord(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked_crc(length)) + data
            + struct.pack("<I", _masked_crc(data)))


def read_tfrecords(path: str | os.PathLike) -> list[bytes]:
    """The records of a TFRecord file, checksums verified (for tests and quick inspection)."""
    data, out, i = Path(path).read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<Q", data, i)
        if struct.unpack_from("<I", data, i + 8)[0] != _masked_crc(data[i:i + 8]):
            raise ValueError(f"{path}: bad length checksum at byte {i}")
        payload = data[i + 12:i + 12 + n]
        if struct.unpack_from("<I", data, i + 12 + n)[0] != _masked_crc(payload):
            raise ValueError(f"{path}: bad data checksum at byte {i}")
        out.append(payload)
        i += 16 + n
    return out


def _scalars(record: Record) -> dict[str, float]:
    out = {}
    for key, value in record.items():
        if key in ("epoch", "step") or isinstance(value, bool):
            continue
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue  # not a scalar: TensorBoard shows only numbers
    return out


class TensorBoardWriter:
    """Scalars of each record to a TensorBoard event file in ``logdir``, at step = epoch.

    Each process appends to its own file (TensorBoard reads them all). After
    :meth:`truncate_after` (a resume), the next file opens with a ``SessionLog.START`` at the
    first redone epoch, which makes TensorBoard discard the earlier history of the epochs
    redone (as ``purge_step`` does in ``tensorboardX``), so the plots show one history."""

    def __init__(self, logdir: str | os.PathLike) -> None:
        self.logdir = Path(logdir)
        self._file = None
        self._path: Path | None = None
        self._purge_from: int | None = None

    def _open(self):
        if self._file is None:
            self.logdir.mkdir(parents=True, exist_ok=True)
            now = time.time()
            name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
            path = self.logdir / name
            n = 1
            while path.exists():  # two writers in one second in one process
                path, n = self.logdir / f"{name}.{n}", n + 1
            self._file, self._path = path.open("ab"), path
            self._file.write(_tfrecord(_event(now, 0, file_version="brain.Event:2")))
            if self._purge_from is not None:
                self._file.write(_tfrecord(_event(now, self._purge_from, session_start=True)))
        return self._file

    @property
    def path(self) -> Path | None:
        """The event file written to (None before the first write)."""
        return self._path

    def write(self, record: Record) -> None:
        f = self._open()
        f.write(_tfrecord(_event(time.time(), int(record["epoch"]), scalars=_scalars(record))))
        f.flush()

    def truncate_after(self, epoch: int) -> None:
        if self._file is None:
            self._purge_from = epoch + 1
        else:  # mid-run (not how the epoch loop uses it): purge in the open file
            self._file.write(_tfrecord(_event(time.time(), epoch + 1, session_start=True)))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- Weights & Biases ---------------------------------------------------------------------------


class WandbWriter:
    """Records to a W&B run, at step = epoch. ``run_id`` (the run directory's name) makes a
    resumed run continue the same W&B run (``resume="allow"``). W&B cannot drop logged steps:
    after a resume it ignores, with its own warning, records of epochs it already holds, so
    the redone epochs keep their first values there (``metrics.jsonl`` is the reference).

    The package is imported at once (a missing one fails before training), the W&B run is
    started at the first record (a finished run that is only reused starts none)."""

    def __init__(self, run_id: str, *, name: str | None = None, project: str | None = None,
                 config: Mapping[str, Any] | None = None,
                 directory: str | os.PathLike | None = None) -> None:
        self._wandb = require("wandb", "wandb")
        self._init = {"id": run_id, "name": name or run_id, "project": project,
                      "config": dict(config or {}), "resume": "allow",
                      "dir": None if directory is None else str(directory)}
        self._run = None

    def write(self, record: Record) -> None:
        if self._run is None:
            self._run = self._wandb.init(**self._init)
        self._run.log(_scalars(record), step=int(record["epoch"]))

    def truncate_after(self, epoch: int) -> None:
        pass  # see the class docstring

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def require(module: str, extra: str):
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra that brings it."""
    return errors.require(module, extra, f"the {extra} metric writer (or drop {extra!r} from "
                                         "config.logging.writers)")


# --- Composition and choice by config -----------------------------------------------------------


class MultiWriter:
    """Fans each call out to ``writers`` in order. ``close`` closes every writer even when one
    fails (the first failure is raised after)."""

    def __init__(self, writers: Sequence[MetricWriter]) -> None:
        self.writers = list(writers)

    def write(self, record: Record) -> None:
        for w in self.writers:
            w.write(record)

    def truncate_after(self, epoch: int) -> None:
        for w in self.writers:
            w.truncate_after(epoch)

    def close(self) -> None:
        error = None
        for w in self.writers:
            try:
                w.close()
            except Exception as e:  # close the rest, then raise the first
                error = error or e
        if error is not None:
            raise error


#: Writer names a run config may list in ``logging.writers``.
WRITERS = ("jsonl", "tensorboard", "wandb")
DEFAULT_WRITERS = ("jsonl",)


def writer_names(logging_cfg: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The writers named by a config's ``logging`` section (default ``("jsonl",)``), checked:
    a :class:`UserError` for an unknown or repeated name. A bare string is one name."""
    names = (logging_cfg or {}).get("writers", DEFAULT_WRITERS)
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        if name not in WRITERS:
            raise UserError(f"logging.writers: unknown writer {name!r}; available: "
                            f"{', '.join(WRITERS)}")
    if len(set(names)) != len(names):
        raise UserError(f"logging.writers names a writer twice: {names!r}")
    return names


def make_writer(directory: str | os.PathLike, logging_cfg: Mapping[str, Any] | None = None, *,
                config: Mapping[str, Any] | None = None) -> MultiWriter:
    """The writers of a run directory named by ``logging_cfg`` (see :func:`writer_names`):
    ``jsonl`` -> ``metrics.jsonl`` (+ ``timing.jsonl``), ``tensorboard`` -> ``tb/``,
    ``wandb`` -> a W&B run named after the directory (project ``logging.wandb_project``,
    else W&B's default), given ``config``."""
    directory = Path(directory)
    writers: list[MetricWriter] = []
    for name in writer_names(logging_cfg):
        if name == "jsonl":
            writers.append(MetricsWriter(directory / "metrics.jsonl", directory / "timing.jsonl"))
        elif name == "tensorboard":
            writers.append(TensorBoardWriter(directory / "tb"))
        else:
            project = (logging_cfg or {}).get("wandb_project") or None
            writers.append(WandbWriter(directory.name, project=project, config=config,
                                       directory=directory))
    return MultiWriter(writers)


def format_epoch(desc: str, record: Record, epochs: int) -> str:
    """The one log line of an epoch (used when progress bars are off)."""
    parts = [f"{desc} epoch {record['epoch']}/{epochs}"]
    for key, label, fmt in (("train_loss", "train loss", ".4f"), ("train_accuracy", "acc", ".4f"),
                            ("test_loss", "test loss", ".4f"), ("test_accuracy", "acc", ".4f"),
                            ("lr", "lr", ".3g"), ("sparsity", "sparsity", ".4f"),
                            ("images_per_s", "img/s", ".0f"), ("epoch_time_s", "time", ".1f")):
        if key in record:
            unit = "s" if key == "epoch_time_s" else ""
            parts.append(f"{label} {record[key]:{fmt}}{unit}")
    return " | ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]
