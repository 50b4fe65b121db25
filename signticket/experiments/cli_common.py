"""The command line every experiment shares, and the files every experiment leaves behind.

An experiment module defines ``NAME``, ``TITLE``, ``run(config, args, out) -> results`` (a
JSON-able list, one entry per seed or run) and ``report(config, results, out, title) ->
(markdown, figure paths)``. :func:`experiment_main` gives it the command line
``--config FILE [--config.key=value ...] [--out DIR] [--table-only]``; every finished experiment
leaves ``results.json`` and ``experiment.json`` (which experiment, config file, resolved config)
in its output directory, so ``signticket tables`` can regenerate every table and figure from disk
without training.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from ml_collections import ConfigDict

from signticket import config as config_lib
from signticket import provenance
from signticket.checkpoint import write_json_atomic
from signticket.runs import DEFAULT_RUNS_ROOT, enable_compilation_cache

RESULTS_FILE = "results.json"
EXPERIMENT_FILE = "experiment.json"


class IncompleteResultsError(FileNotFoundError):
    """An output directory without finished results (a run still going, killed, or never run)."""


def experiment_parser(doc: str | None, out_help: str) -> argparse.ArgumentParser:
    """``--config``, ``--runs-root``, ``--data-dir``, ``--out``, ``--no-progress``,
    ``--table-only``; add more."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="signticket/experiments/configs/<name>.py")
    parser.add_argument("--runs-root", default=DEFAULT_RUNS_ROOT)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help=out_help)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite tables and figures from <out>/results.json; no training")
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
        config_lib.validate(config)
    except config_lib.ConfigError as e:
        parser.error(str(e))  # one clear line and exit code 2, no traceback
    return args, config


def save_results(out: Path, name: str, config_file: str, config: ConfigDict,
                 results: list) -> None:
    """Write ``results.json`` then ``experiment.json`` (atomically; the latter marks it done),
    with the provenance of the code that made the results
    (:func:`signticket.provenance.collect`)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RESULTS_FILE, results)
    write_json_atomic(out / EXPERIMENT_FILE, {"experiment": name, "config_file": str(config_file),
                                              "config": config.to_dict(),
                                              "provenance": provenance.collect()})


def load_results(out: Path) -> tuple[dict, list]:
    """``(experiment.json, results)`` of a finished output directory, or a clear error."""
    meta, res = out / EXPERIMENT_FILE, out / RESULTS_FILE
    if not (meta.exists() and res.exists()):
        raise IncompleteResultsError(
            f"{out} has no finished results ({EXPERIMENT_FILE} and {RESULTS_FILE}): the run was "
            f"killed or never ran; re-run the experiment to finish it (finished runs are reused)")
    try:
        return json.loads(meta.read_text()), json.loads(res.read_text())
    except json.JSONDecodeError as e:
        raise IncompleteResultsError(f"{out}: unreadable results ({e}); re-run the experiment "
                                     f"to rewrite them") from e


def execute(module: ModuleType, config: ConfigDict, args: argparse.Namespace, out: Path,
            config_file: str) -> tuple[str, list[Path]]:
    """Run (or with ``args.table_only`` reload) one experiment, save it, write its report."""
    if args.table_only:
        _, results = load_results(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        results = module.run(config, args, out)
        save_results(out, module.NAME, config_file, config, results)
    return module.report(config, results, out, f"{module.TITLE} — {Path(config_file).stem}")


def experiment_main(module: ModuleType, argv: Sequence[str] | None = None,
                    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
                    ) -> int:
    """The ``python -m experiments.<name>`` entry point: parse, :func:`execute`, print."""
    from signticket import cpu_tuning

    cpu_tuning.apply()  # as the CLI does, before anything starts JAX's backend
    parser = experiment_parser(module.__doc__, f"default: results/{module.NAME}/<config name>")
    if add_arguments is not None:
        add_arguments(parser)
    args, config = parse(parser, argv)
    if args.no_progress:  # one log line per epoch instead of the bars
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out or Path("results") / module.NAME / Path(args.config).stem)
    from signticket.data import DatasetUnavailableError
    from signticket.errors import UserError
    from signticket.train import NonFiniteLossError

    try:
        markdown, figures = execute(module, config, args, out, args.config)
    except (IncompleteResultsError, UserError, DatasetUnavailableError, NonFiniteLossError) as e:
        parser.error(str(e))  # a user mistake: one line, exit code 2; bugs keep the traceback
    print(markdown)
    for path in figures:
        print(f"figure: {path}")
    return 0
