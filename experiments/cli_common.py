"""The command line every experiment shares: ``--config FILE [--config.key=value ...]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ml_collections import ConfigDict

from signticket import config as config_lib
from signticket.runs import DEFAULT_RUNS_ROOT, enable_compilation_cache


def experiment_parser(doc: str | None, out_help: str) -> argparse.ArgumentParser:
    """``--config``, ``--runs-root``, ``--data-dir``, ``--out``, ``--no-progress``; add more."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiments/configs/<name>.py")
    parser.add_argument("--runs-root", default=DEFAULT_RUNS_ROOT)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help=out_help)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def parse(parser: argparse.ArgumentParser,
          argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, ConfigDict]:
    """Arguments and the config file's config with ``--config.key=value`` overrides applied
    (unknown keys are rejected); turns on the persistent compilation cache."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    enable_compilation_cache()
    try:
        config = config_lib.apply_overrides(config_lib.load_config_file(args.config), overrides)
    except config_lib.ConfigError as e:
        parser.error(str(e))  # one clear line and exit code 2, no traceback
    return args, config
