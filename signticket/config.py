"""Loading configs: a Python file with ``get_config()``, plus ``key.sub=value`` overrides.

Settings that change *where* results go or how they are shown (runs root, data dir, progress
bars) are not part of a config, so they never change its hash.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ml_collections import ConfigDict

from signticket.errors import UserError


class ConfigError(UserError):
    """A config file or override is invalid."""


#: ``config.model.compute_dtype``: the engine's mixed-precision policy, accepted by every config
#: (run or experiment: ``--config.model.compute_dtype=bfloat16``). It lives under ``model``
#: because every pipeline stage copies its parent's ``model`` into its run config, so it reaches
#: every run and its hash. The default is stored as the key's *absence* (:func:`normalize`), so
#: configs written before the key existed keep their hashes and run directories.
DEFAULT_COMPUTE_DTYPE = "float32"
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
#: Keys every config accepts without declaring them (dotted path -> default).
OPTIONAL_KEYS = {"model.compute_dtype": DEFAULT_COMPUTE_DTYPE}


def normalize(config: ConfigDict) -> ConfigDict:
    """``config`` with optional keys at their default removed (in place; returned): one config,
    one hash, whether or not the default was spelled out."""
    for path, default in OPTIONAL_KEYS.items():
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ConfigDict) else None
        if isinstance(node, ConfigDict) and leaf in node and node[leaf] == default:
            del node[leaf]
    return config


def load_config_file(path: str | os.PathLike) -> ConfigDict:
    """``get_config()`` of the Python file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_signticket_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"config file {path} is not a Python file (expected <name>.py)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        # The user's file, not our code: name the file, line and problem, no traceback.
        raise ConfigError(f"config file {path} has a syntax error at line {e.lineno}: {e.msg}") \
            from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, ConfigDict):
        raise ConfigError(f"get_config() of {path} returned {type(config).__name__}, "
                          "not an ml_collections.ConfigDict")
    return config


def check_keys(config: ConfigDict, reference: ConfigDict, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for any key of ``config`` absent from ``reference``.
    Keys under a ``kwargs`` entry are free (they are passed to a constructor that checks them)."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in OPTIONAL_KEYS:
            continue
        if key not in reference:
            valid = ", ".join(sorted(f"{prefix}{k}" for k in reference.keys()))
            raise ConfigError(f"unknown config key {name!r} (valid keys here: {valid})")
        if isinstance(value, ConfigDict) and key != "kwargs":
            ref = reference[key]
            if isinstance(ref, ConfigDict):
                check_keys(value, ref, prefix=f"{name}.")


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
    """Apply ``"a.b=value"`` overrides (values parsed as Python literals, else strings).
    Unknown keys raise :class:`ConfigError`, except new keys under ``kwargs``."""
    config = ConfigDict(config.to_dict())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = config
        for i, part in enumerate(parts[:-1]):
            if part not in node or not isinstance(node[part], ConfigDict):
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}")
            node = node[part]
        leaf = parts[-1]
        optional = key.strip() in OPTIONAL_KEYS
        if leaf not in node and parts[-2:-1] != ["kwargs"] and not optional:
            valid = ", ".join(sorted(node.keys()))
            raise ConfigError(f"unknown config key {key!r} (valid keys here: {valid})")
        value = _parse_value(text)
        if leaf in node and isinstance(node[leaf], float) and isinstance(value, int):
            value = float(value)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"bad value for {key!r}: {e}") from e
    return normalize(config)


def load(
    path: str | os.PathLike | None, overrides: Sequence[str], default: ConfigDict
) -> ConfigDict:
    """The config of ``path`` (or ``default``), checked against ``default``'s keys, overridden."""
    config = default if path is None else load_config_file(path)
    check_keys(config, default)
    return apply_overrides(config, overrides)


# --- Validation: every value a run reads, checked before any data is loaded or directory made.

# Integer settings that must be at least 1 wherever they appear.
_AT_LEAST_ONE = ("epochs", "batch_size", "eval_every", "checkpoint_every", "epochs_per_round",
                 "lockstep")
# Integer settings that must be at least 0.
_AT_LEAST_ZERO = ("train_subset", "test_subset", "warmup_epochs", "rewind_epoch", "rounds")
# Model widths: a zero-width layer has no weights to train (and fails deep inside Flax).
_MODEL_WIDTHS = ("channels", "widths", "width", "features")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_leaf(name: str, key: str, value) -> None:
    if key in _AT_LEAST_ONE and not (_is_int(value) and value >= 1):
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if key in _AT_LEAST_ZERO and not (_is_int(value) and value >= 0):
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    if key in ("seed", "data_seed") and not _is_int(value):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if key == "learning_rate" and not (_is_number(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    if key == "momentum" and not (_is_number(value) and 0 <= value < 1):
        raise ConfigError(f"{name} must lie in [0, 1), got {value!r}")
    if key == "weight_decay" and not (_is_number(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    if key == "checkpoint_min_interval_s" and not (_is_number(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0 (seconds), got {value!r}")
    if key == "gamma" and not (_is_number(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    if key == "milestones":
        ok = isinstance(value, list | tuple) and all(_is_number(m) and 0 < m <= 1 for m in value)
        if not ok or list(value) != sorted(value):
            raise ConfigError(f"{name} must be increasing fractions of training in (0, 1], "
                              f"got {value!r}")
    if key in ("fraction", "sparsity") and not (_is_number(value) and 0 <= value < 1):
        raise ConfigError(f"{name} must lie in [0, 1), got {value!r}")
    if key == "compute_dtype" and value not in COMPUTE_DTYPES:
        raise ConfigError(f"{name} must be one of {', '.join(COMPUTE_DTYPES)}, got {value!r}")


def _check_model_kwargs(name: str, kwargs: ConfigDict) -> None:
    for key, value in kwargs.items():
        if key not in _MODEL_WIDTHS:
            continue
        values = value if isinstance(value, list | tuple) else (value,)
        if not values or not all(_is_int(v) and v >= 1 for v in values):
            raise ConfigError(f"{name}.{key} must be integers >= 1 (layer widths), got {value!r}")


def validate(config: ConfigDict, prefix: str = "", epochs: int | None = None) -> None:
    """Raise :class:`ConfigError` naming the first invalid value of ``config``.

    Checked by key name wherever it appears (a run config or an experiment's nested stage
    configs): epochs / batch size / eval and checkpoint periods >= 1, learning rate > 0, momentum
    in [0, 1), weight decay >= 0, milestones increasing in (0, 1], fractions in [0, 1), model
    widths >= 1, and an optimizer's ``warmup_epochs`` shorter than its stage's ``epochs``. Call it
    before loading data or creating a run directory, so a bad value costs nothing."""
    if "epochs" in config and _is_int(config["epochs"]):
        epochs = config["epochs"]
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ConfigDict):
            if key == "kwargs":
                _check_model_kwargs(name, value)
            elif key not in ("paper", "experiment"):  # reference numbers and experiment knobs
                validate(value, f"{name}.", epochs)
            continue
        _check_leaf(name, key, value)
    # The learning-rate warm-up of an optimizer must end before its stage does.
    if "learning_rate" in config and epochs is not None:
        warmup = config.get("warmup_epochs", 0)
        if _is_int(warmup) and warmup >= epochs:
            raise ConfigError(f"{prefix}warmup_epochs ({warmup}) must be shorter than the "
                              f"training it warms up ({epochs} epochs)")
