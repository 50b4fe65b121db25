"""Typed run descriptions: a train run is its config *and* every input it starts from, each with
the identity of where it came from (OpenLTH's ``Desc`` / hashname idea).

A run used to be named by its config alone, and callers had to mirror into that config every
array they passed to :func:`~signticket.runs.train_run` (a parent round's weights, a mask, a
transferred init). Forgetting one let two different runs share a directory, so a finished run
was silently reused for the wrong input. Now:

* every array a run starts from is an :class:`Input`: the value and its ``source`` (a parent
  run's hashname, or a recipe that names every parent), and :class:`RunDesc` has a field per
  input, so an input cannot be passed without saying where it came from;
* the run's identity (:meth:`RunDesc.identity`, hashed into its directory name) is the config
  plus each input's source plus the name of the pre-forward hook;
* the run directory also keeps a *sketch* of each input's values (``inputs.json``): reusing or
  resuming a directory with inputs whose values differ from the ones it was started with fails
  loudly, naming the input, instead of mixing results. That catches a source string that leaves
  something out (the sketch tolerates float rounding noise, so a run moved to another machine
  still resumes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from signticket.checkpoint import (
    INPUTS_FILE,
    CheckpointError,
    config_hash,
    is_primary,
    run_dir,
    run_identity,
    write_json_atomic,
)
from signticket.errors import UserError

#: The array inputs a run can start from (``RunDesc`` fields of type ``Input``).
INPUT_FIELDS = ("init_params", "init_batch_stats", "mask", "hook_state", "tx")
#: Relative tolerance of the value sketch (float inputs recomputed on another machine may differ
#: in their last bits; a different input differs by far more).
SKETCH_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Input:
    """One input of a run and where it came from.

    ``source`` names it completely: a parent run's hashname (``run.directory.name``) plus the
    recipe applied to it, e.g. ``"sign_transfer(imp-constant-aws-r10-1a2b…) on init seed 1003"``.
    """

    value: Any
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise UserError("an Input needs a non-empty source: the run or recipe it comes from")


def hook_identity(hook: Any) -> str | None:
    """The name a pre-forward hook contributes to a run's identity: its ``identity`` attribute
    if it has one, else its module and qualified name."""
    if hook is None:
        return None
    name = getattr(hook, "identity", None)
    if name is None:
        name = f"{getattr(hook, '__module__', '?')}.{getattr(hook, '__qualname__', repr(hook))}"
    return str(name)


@dataclasses.dataclass(frozen=True)
class RunDesc:
    """What a train run is: its config, the inputs it starts from and the hook its forward pass
    applies. Its directory under a runs root is ``<name>-<hash of identity()>``."""

    config: ConfigDict
    name: str = "train"
    init_params: Input | None = None
    init_batch_stats: Input | None = None
    mask: Input | None = None
    hook_state: Input | None = None
    tx: Input | None = None
    pre_forward: Any = None  # signticket.train.PreForward

    def __post_init__(self) -> None:
        if not isinstance(self.config, ConfigDict | Mapping):
            raise UserError("RunDesc.config must be a ConfigDict, got "
                            f"{type(self.config).__name__}")
        for field in INPUT_FIELDS:
            value = getattr(self, field)
            if value is not None and not isinstance(value, Input):
                raise UserError(
                    f"RunDesc.{field} got a bare {type(value).__name__}; wrap it as "
                    f"Input(value, source=...) naming the run or recipe it comes from, so the "
                    f"run's identity includes it")

    def inputs(self) -> dict[str, Input]:
        """The inputs given, by field name."""
        return {f: getattr(self, f) for f in INPUT_FIELDS if getattr(self, f) is not None}

    def identity(self) -> dict[str, Any]:
        """Config identity (:func:`~signticket.checkpoint.run_identity`) plus each input's
        source and the pre-forward hook's name. A run with neither keeps its config's hash."""
        identity = run_identity(self.config)
        sources = {k: v.source for k, v in self.inputs().items()}
        if sources:
            identity["inputs"] = sources
        hook = hook_identity(self.pre_forward)
        if hook is not None:
            identity["pre_forward"] = hook
        return identity

    @property
    def hashname(self) -> str:
        """``<name>-<hash>``: the run's directory name, and how children name it as a parent."""
        return f"{self.name}-{config_hash(self.identity())}"

    def directory(self, runs_root: str | os.PathLike) -> Path:
        """The run directory (created, with ``config.json`` holding :meth:`identity`)."""
        return run_dir(runs_root, self.identity(), self.name)

    def value(self, field: str) -> Any:
        """The value of input ``field``, or ``None`` if not given."""
        given = getattr(self, field)
        return None if given is None else given.value


def as_desc(desc: RunDesc | ConfigDict, name: str | None = None) -> RunDesc:
    """A config alone describes a run with no inputs (a dense run from its seed's init)."""
    if isinstance(desc, RunDesc):
        return desc if name is None or name == desc.name else dataclasses.replace(desc, name=name)
    return RunDesc(desc, name=name or "train")


# -- value sketches -------------------------------------------------------------------------------


def _host_values(x: Any) -> np.ndarray | None:
    """``x`` on the host, or ``None`` where this process cannot see all of it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            return None
        x = x.addressable_shards[0].data
    return np.asarray(x)


def _leaf_sketch(path: str, x: Any) -> dict[str, Any] | None:
    values = _host_values(x)
    if values is None:
        return None
    flat = values.reshape(-1)
    # A fixed pseudo-random projection: inputs that differ anywhere (signs, one layer, a
    # different seed) move it by far more than rounding noise does.
    weights = np.cos(np.arange(len(flat)) * 2.399963229728653)  # the golden angle
    as_float = flat.astype(np.float64)
    return {"path": path, "shape": list(values.shape), "dtype": str(values.dtype),
            "nonzero": int(np.count_nonzero(flat)), "sum_abs": float(np.abs(as_float).sum()),
            "projection": float(as_float @ weights)}


def sketch(value: Any) -> list[dict[str, Any]] | str:
    """Per-leaf summary of ``value`` (array leaves); a non-array value (an optax transform)
    sketches as its type name."""
    leaves = jax.tree_util.tree_leaves_with_path(value)
    if not leaves or not all(hasattr(x, "shape") for _, x in leaves):
        return type(value).__name__
    return [s for p, x in leaves
            if (s := _leaf_sketch(jax.tree_util.keystr(p), x)) is not None]


def _close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= SKETCH_RTOL * max(scale, 1e-12)


def _differs(stored: Any, now: Any) -> str | None:
    """Why two sketches differ, or ``None`` if they agree within rounding noise."""
    if isinstance(stored, str) or isinstance(now, str):
        return None if stored == now else f"{stored} vs {now}"
    if [s["path"] for s in stored] != [s["path"] for s in now]:
        return "different tree structure"
    for s, n in zip(stored, now, strict=True):
        if s["shape"] != n["shape"] or s["dtype"] != n["dtype"]:
            return f"{s['path']}: {s['dtype']}{s['shape']} vs {n['dtype']}{n['shape']}"
        size = int(np.prod(s["shape"])) if s["shape"] else 1
        if abs(s["nonzero"] - n["nonzero"]) > SKETCH_RTOL * size:
            return f"{s['path']}: {s['nonzero']} vs {n['nonzero']} non-zero entries"
        scale = max(s["sum_abs"], n["sum_abs"])
        if not (_close(s["sum_abs"], n["sum_abs"], scale)
                and _close(s["projection"], n["projection"], scale)):
            return f"{s['path']}: different values"
    return None


def check_inputs(directory: Path, desc: RunDesc) -> None:
    """Store the inputs' sketches in a new run directory; in an existing one, fail if they
    differ from the stored ones (the run's identity left an input out)."""
    if not is_primary():
        return
    inputs = desc.inputs()
    now = {k: sketch(v.value) for k, v in inputs.items()}
    path = directory / INPUTS_FILE
    if not path.exists():
        write_json_atomic(path, now)
        return
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e}); delete {directory} to start over") from e
    for field in sorted(set(stored) | set(now)):
        why = ("missing" if field not in now or field not in stored
               else _differs(stored[field], now[field]))
        if why is not None:
            raise CheckpointError(
                f"{directory} was started from a different {field} than this run passes "
                f"({why}) although both have the source {inputs[field].source!r}"
                if field in inputs else
                f"{directory} was started with a {field} this run does not pass",
            )
