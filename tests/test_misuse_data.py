"""A corrupt npz cache of a prepared dataset is rebuilt from the TFDS files, not trusted and not
fatal (real offline Fashion-MNIST, in a private copy of the data dir)."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from signticket.data import tfds_source

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def test_corrupt_cache_is_rebuilt_from_prepared_tfds(tmp_path):
    real = tfds_source.resolve_data_dir(None)
    if not (real / "fashion_mnist").is_dir():
        pytest.skip("Fashion-MNIST is not prepared on this machine")
    shutil.copytree(real / "fashion_mnist", tmp_path / "fashion_mnist")
    train = tfds_source.cache_path(tmp_path, "fashion_mnist", "train")
    test = tfds_source.cache_path(tmp_path, "fashion_mnist", "test")
    train.parent.mkdir(parents=True)
    train.write_bytes(b"not a zip")  # garbage
    shutil.copy(tfds_source.cache_path(real, "fashion_mnist", "test"), test)
    test.write_bytes(test.read_bytes()[: test.stat().st_size // 2])  # cut short by a kill
    script = textwrap.dedent(f"""
        from pathlib import Path
        import numpy as np
        from signticket import data
        from signticket.data import tfds_source
        rebuilt = data.load("fashion_mnist", data_dir={str(tmp_path)!r})
        ref = data.load("fashion_mnist", data_dir={str(real)!r})
        np.testing.assert_array_equal(rebuilt.train_images, ref.train_images)
        np.testing.assert_array_equal(rebuilt.test_labels, ref.test_labels)
        for split in ("train", "test"):
            path = tfds_source.cache_path(Path({str(tmp_path)!r}), "fashion_mnist", split)
            assert tfds_source.read_cache(path, (28, 28, 1)) is not None, split
        print("REBUILT")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                                **{tfds_source.OFFLINE_ENV: "1"}))
    assert "REBUILT" in proc.stdout, proc.stderr[-3000:]
