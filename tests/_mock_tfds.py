"""TFDS's mock data behind signticket's streaming path (tests only).

``tfds.testing.mock_data`` makes the real TFDS builder generate random examples (JPEG-encoded
images for ImageNet) instead of reading prepared files, so the whole input pipeline — TFDS
reader, our decode / crop / flip maps, batching, sharding — runs without ImageNet. The one
seam replaced is :func:`signticket.data.stream.open_builder` (which would otherwise refuse an
unprepared data dir).

As a script, ``python tests/_mock_tfds.py N -- <signticket CLI args>`` runs the CLI under the
mock with ``N`` examples per split.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def mock_streaming(num_examples: int) -> Iterator[None]:
    from signticket.data import stream, tfds_source

    tfds = tfds_source.import_tfds()
    original = stream.open_builder
    with tfds.testing.mock_data(num_examples=num_examples,
                                policy=tfds.testing.MockPolicy.USE_CODE):
        stream.open_builder = lambda spec, data_dir: tfds.builder(spec.tfds_name,
                                                                  data_dir=str(data_dir))
        try:
            yield
        finally:
            stream.open_builder = original


def main(argv: list[str]) -> int:
    n, sep, *rest = argv
    assert sep == "--", argv
    from signticket import cli

    with mock_streaming(int(n)):
        return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
