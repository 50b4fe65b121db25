"""Loading configs: a Python file with ``get_config()``, plus ``key.sub=value`` overrides.

Settings that change *where* results go or how they are shown (runs root, data dir, progress
bars) are not part of a config, so they never change its hash.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from ml_collections import ConfigDict


class ConfigError(ValueError):
    """A config file or override is invalid."""


def load_config_file(path: str | os.PathLike) -> ConfigDict:
    """``get_config()`` of the Python file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_signticket_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    return module.get_config()


def check_keys(config: ConfigDict, reference: ConfigDict, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for any key of ``config`` absent from ``reference``.
    Keys under a ``kwargs`` entry are free (they are passed to a constructor that checks them)."""
    for key, value in config.items():
        name = f"{prefix}{key}"
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
        if leaf not in node and parts[-2:-1] != ["kwargs"]:
            valid = ", ".join(sorted(node.keys()))
            raise ConfigError(f"unknown config key {key!r} (valid keys here: {valid})")
        value = _parse_value(text)
        if leaf in node and isinstance(node[leaf], float) and isinstance(value, int):
            value = float(value)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"bad value for {key!r}: {e}") from e
    return config


def load(
    path: str | os.PathLike | None, overrides: Sequence[str], default: ConfigDict
) -> ConfigDict:
    """The config of ``path`` (or ``default``), checked against ``default``'s keys, overridden."""
    config = default if path is None else load_config_file(path)
    check_keys(config, default)
    return apply_overrides(config, overrides)
