"""``python -m signticket.data.prepare NAME [--data-dir D]``: prepare and cache a dataset.

Run it once per machine (or once on a machine with internet, then copy the data dir). For
``fashion_mnist`` it works offline from the Debian package ``dataset-fashion-mnist``;
``imagenet2012`` and ``tiny_imagenet`` are prepared from files downloaded by hand into
``--manual-dir``. For in-memory datasets it also writes the npz cache, so training never
imports TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from signticket.data import registry, tfds_source
from signticket.data.errors import DatasetUnavailableError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m signticket.data.prepare",
        description="Prepare a TFDS dataset (offline where possible) and cache it for signticket.",
    )
    parser.add_argument("name", choices=registry.names() + registry.streaming_names())
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"TFDS data dir (default: ${tfds_source.DATA_DIR_ENV}, else "
        f"{tfds_source.DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--manual-dir",
        default=None,
        help="folder with manually downloaded archives (ImageNet, Tiny-ImageNet; default: "
        "<data-dir>/downloads/manual)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_dir = tfds_source.resolve_data_dir(args.data_dir)
    spec = registry.get(args.name)
    start = time.perf_counter()
    try:
        if spec.streaming:
            from signticket.data import imagenet

            manual = Path(args.manual_dir).expanduser() if args.manual_dir else None
            builder = imagenet.ensure_prepared(data_dir, manual)
            paths = [Path(str(builder.data_dir))]
        else:
            manual = Path(args.manual_dir).expanduser() if args.manual_dir else None
            paths = tfds_source.prepare(spec, data_dir, manual_dir=manual)
    except DatasetUnavailableError as e:
        print(f"prepare {args.name}: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.name}: ready in {time.perf_counter() - start:.1f}s (TFDS data dir {data_dir})")
    for p in paths:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
