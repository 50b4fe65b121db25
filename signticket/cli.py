"""The ``signticket`` command line."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from collections.abc import Sequence

from signticket import cpu_tuning, finishing, interrupts
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


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """``jax.distributed.initialize`` when coordinator settings are given (arguments first,
    else the standard ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``);
    returns whether it did. Must run before anything starts JAX's backend.

    Every process then runs the same command: each reads its own part of streamed data, all
    take part in the (sharded) steps and in orbax's checkpoint saves, and only process 0
    writes configs, metrics, DONE markers, tables and figures."""
    import os

    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator:
        return False
    env_n, env_id = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    num_processes = num_processes if num_processes is not None else env_n and int(env_n)
    process_id = process_id if process_id is not None else env_id and int(env_id)
    if num_processes is None or process_id is None:
        from signticket.errors import UserError

        raise UserError("a coordinator needs --num-processes and --process-id (or "
                        "JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    import jax

    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True


def _cmd_train(args, overrides) -> int:
    from signticket import config as config_lib
    from signticket.configs import train as train_config
    from signticket.runs import check_names, check_run_config, load_dataset, train_run

    cfg = config_lib.load(args.config, overrides, train_config.get_config())
    check_names(cfg)
    check_run_config(cfg, args.runs_root)  # before loading data: bad values cost nothing
    dataset = load_dataset(cfg.data, args.data_dir)
    result = train_run(
        cfg, dataset, name="train", runs_root=args.runs_root, progress=not args.no_progress
    )
    from signticket.checkpoint import is_primary

    if not is_primary():
        return 0
    print(json.dumps({"run_dir": str(result.directory), **result.summary}, indent=2))
    return 0


def _suite():
    # The experiments (configs and table writers) import the whole lab: loaded on demand.
    from signticket.experiments import suite

    return suite


def _cmd_list(args, overrides) -> int:
    print(_suite().list_tables())
    return 0


def _cmd_reproduce(args, overrides) -> int:
    from pathlib import Path

    markdown, figures = _suite().reproduce(
        args.table, args.scale, overrides, results=Path(args.results), runs_root=args.runs_root,
        data_dir=args.data_dir, progress=not args.no_progress)
    print(markdown)
    for path in figures:
        print(f"figure: {path}")
    return 0


def _cmd_tables(args, overrides) -> int:
    from pathlib import Path

    sections, problems = _suite().regenerate_tables(Path(args.results))
    print("\n".join(sections))
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if not sections:
        print(f"signticket tables: no finished results under {args.results}", file=sys.stderr)
        return 1
    print(f"index: {Path(args.results) / 'README.md'}")
    return 0


def _cmd_quickstart(args, overrides) -> int:
    from pathlib import Path

    from signticket.errors import UserError

    if overrides:
        raise UserError("quickstart takes no --config overrides; use `signticket reproduce`")
    done = _suite().quickstart(results=Path(args.results), runs_root=args.runs_root,
                               data_dir=args.data_dir, progress=not args.no_progress)
    print("\n=== quickstart: the three tables ===")
    for _, markdown, _ in done:
        print(markdown)
    print("figures:")
    for _, _, figures in done:
        for path in figures:
            print(f"  {path}")
    print("Regenerate the tables from disk with `signticket tables "
          f"--results {args.results}`; re-running resumes and reuses finished runs.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signticket", description="Sign-aware lottery tickets in JAX."
    )
    from signticket import __version__

    parser.add_argument("--version", action="version", version=f"signticket {__version__}")
    multi = parser.add_argument_group(
        "multi-host", "run one process per host with the same command and these settings "
        "(default: env JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    multi.add_argument("--coordinator", default=None, help="host:port of process 0")
    multi.add_argument("--num-processes", type=int, default=None)
    multi.add_argument("--process-id", type=int, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a dense model (default: small convnet on Fashion-MNIST)",
        description="Train a dense model. Override config values with --config.key=value.",
    )
    train.add_argument("--config", help="Python file with get_config() (default: built-in)")
    train.set_defaults(func=_cmd_train)
    quick = sub.add_parser(
        "quickstart", help="the three papers at reduced CPU scale on offline Fashion-MNIST",
        description="AWS, permuted masks and Sign-In, reduced to a few minutes on 2 CPU cores; "
                    "prints three tables. Killed runs resume; finished runs are reused.")
    quick.set_defaults(func=_cmd_quickstart, results="results/quickstart")
    reproduce = sub.add_parser(
        "reproduce", help="run one paper table (see `signticket list`)",
        description="Run a paper table's whole pipeline (resumable); --config.key=value "
                    "overrides its config.")
    reproduce.add_argument("table", help="table name (see `signticket list`)")
    reproduce.add_argument("--scale", choices=("paper", "cpu"), default="paper",
                           help="paper hyperparameters, or the offline Fashion-MNIST variant")
    reproduce.set_defaults(func=_cmd_reproduce, results="results")
    tables = sub.add_parser("tables", help="regenerate every table and figure from disk",
                            description="Rewrite tables, figures and results/README.md from "
                                        "finished results; trains nothing.")
    tables.set_defaults(func=_cmd_tables, results="results")
    listing = sub.add_parser("list", help="the paper tables and their estimated cost")
    listing.set_defaults(func=_cmd_list)
    for p in (quick, reproduce, tables):
        p.add_argument("--results", default=p.get_default("results"),
                       help="where result tables and figures go")
    for p in (train, quick, reproduce, tables):
        p.add_argument("--runs-root", default=DEFAULT_RUNS_ROOT, help="where run dirs live")
        p.add_argument("--data-dir", default=None, help="TFDS data dir (default: env or ~)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user mistake prints one line ``signticket <command>: error: ...`` and
    returns 2. Only :class:`~signticket.errors.UserError` and the few input/environment errors
    named here are caught: any other exception is a bug and keeps its traceback."""
    from signticket.data import DatasetUnavailableError
    from signticket.errors import UserError
    from signticket.experiments.cli_common import IncompleteResultsError
    from signticket.runs import enable_compilation_cache
    from signticket.train import NonFiniteLossError

    cpu_tuning.apply()  # before anything starts JAX's backend
    enable_compilation_cache()
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    if getattr(args, "no_progress", False):  # one log line per epoch instead of the bars
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        init_distributed(args.coordinator, args.num_processes, args.process_id)
        # A run's last checkpoint write overlaps the next run (signticket.finishing).
        with interrupts.ctrl_c_reraised(), finishing.background_finishes():
            return args.func(args, overrides)
    except OSError as e:
        # The machine, not our code: a full disk or a path the user cannot write.
        if e.errno == errno.ENOSPC:
            print(f"signticket {args.command}: error: no space left on the device writing "
                  f"{e.filename or 'a checkpoint'}; free some space and re-run (finished runs "
                  f"and the last checkpoint are kept)", file=sys.stderr)
            return 2
        if e.errno in (errno.EACCES, errno.EROFS, errno.EDQUOT) and e.filename:
            print(f"signticket {args.command}: error: cannot write {e.filename}: {e.strerror}; "
                  "pass a writable --results / --runs-root", file=sys.stderr)
            return 2
        raise
    except (UserError, DatasetUnavailableError, NonFiniteLossError, IncompleteResultsError) as e:
        print(f"signticket {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
