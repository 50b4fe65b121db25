"""TFDS's mock data behind signticket's streaming path (tests only).

``tfds.testing.mock_data`` makes the real TFDS builder generate random examples (JPEG-encoded
images for ImageNet) instead of reading prepared files, so the whole input pipeline — TFDS
reader, our decode / crop / flip maps, batching, sharding — runs without ImageNet; in-memory
datasets (CIFAR) go through the real TFDS read and signticket's npz cache. The seams replaced
are the two "is it prepared here?" gates, :func:`signticket.data.stream.open_builder` and
:func:`signticket.data.tfds_source.ensure_prepared` (which would otherwise refuse an unprepared
data dir). Use a temporary data dir: the npz cache of mock data is written into it.

As a script, ``python tests/_mock_tfds.py N -- <signticket CLI args>`` runs the CLI under the
mock with ``N`` examples per split.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from unittest import mock


def _this_thread_only_mock_fs():
    """TFDS's ``MockFs``, redirecting only the thread that entered it.

    ``mock_data`` wraps each ``builder.as_dataset`` in a ``MockFs``, which patches
    ``os.makedirs``, ``open``, ``exists`` ... process-wide into a temporary directory deleted on
    exit. A checkpoint written in the background while the next epoch's input pipeline is built
    would then create its directories in that temporary tree and lose them (orbax: "No such
    file or directory ... array_metadatas/process_0"). Real TFDS patches nothing; here, calls
    from other threads go to the real file system."""
    from tensorflow_datasets.testing import test_utils

    real = test_utils.MockFs  # (the name is rebound to the subclass below)

    def owner_only(name: str):
        mocked = getattr(real, name)

        def method(self, original_fn, *args, **kwargs):
            if threading.get_ident() != self.owner:
                return original_fn(*args, **kwargs)
            return mocked(self, original_fn, *args, **kwargs)
        return method

    def enter(self):
        self.owner = threading.get_ident()
        return real.__enter__(self)

    redirecting = ("_mock_fn", "_mock_open", "_mock_fn_2_args", "_mock_glob", "_mock_walk")
    ThisThreadOnlyMockFs = type("ThisThreadOnlyMockFs", (real,), {
        "__enter__": enter, **{name: owner_only(name) for name in redirecting}})
    return mock.patch.object(test_utils, "MockFs", ThisThreadOnlyMockFs)


@contextlib.contextmanager
def mock_streaming(num_examples: int) -> Iterator[None]:
    from signticket.data import stream, tfds_source

    tfds = tfds_source.import_tfds()
    originals = stream.open_builder, tfds_source.ensure_prepared

    def builder(spec, data_dir, **_):
        return tfds.builder(spec.tfds_name, data_dir=str(data_dir))

    with _this_thread_only_mock_fs(), tfds.testing.mock_data(
            num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE):
        stream.open_builder = tfds_source.ensure_prepared = builder
        try:
            yield
        finally:
            stream.open_builder, tfds_source.ensure_prepared = originals


def main(argv: list[str]) -> int:
    n, sep, *rest = argv
    assert sep == "--", argv
    from signticket import cli

    with mock_streaming(int(n)):
        return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
