"""The ``signticket`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from signticket.runs import DEFAULT_RUNS_ROOT


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``--config.a.b=value`` overrides (ml_collections style) from other arguments."""
    rest, overrides = [], []
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            overrides.append(arg[len("--config.") :])
        else:
            rest.append(arg)
    return rest, overrides


def _cmd_train(args, overrides) -> int:
    from signticket import config as config_lib
    from signticket.configs import train as train_config
    from signticket.runs import check_names, load_dataset, train_run

    cfg = config_lib.load(args.config, overrides, train_config.get_config())
    check_names(cfg)
    dataset = load_dataset(cfg.data, args.data_dir)
    result = train_run(
        cfg, dataset, name="train", runs_root=args.runs_root, progress=not args.no_progress
    )
    print(json.dumps({"run_dir": str(result.directory), **result.summary}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signticket", description="Sign-aware lottery tickets in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a dense model (default: small convnet on Fashion-MNIST)",
        description="Train a dense model. Override config values with --config.key=value.",
    )
    train.add_argument("--config", help="Python file with get_config() (default: built-in)")
    train.set_defaults(func=_cmd_train)
    for p in (train,):
        p.add_argument("--runs-root", default=DEFAULT_RUNS_ROOT, help="where run dirs live")
        p.add_argument("--data-dir", default=None, help="TFDS data dir (default: env or ~)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from signticket.checkpoint import CheckpointError
    from signticket.config import ConfigError
    from signticket.data import DatasetUnavailableError
    from signticket.runs import enable_compilation_cache
    from signticket.train import NonFiniteLossError

    enable_compilation_cache()
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    try:
        return args.func(args, overrides)
    except (
        ConfigError,
        DatasetUnavailableError,
        CheckpointError,
        NonFiniteLossError,
        ValueError,
        TypeError,
    ) as e:
        print(f"signticket {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
