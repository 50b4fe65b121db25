"""TFDS as the source of every dataset: where data lives, offline preparation, and an npz cache.

Order of look-ups for an in-memory split (:func:`load_arrays`):

1. ``<data_dir>/signticket_cache/<name>_<split>.npz`` — decoded arrays written by an earlier
   load. Reading it needs only numpy, so later runs never import TensorFlow (slow to import).
2. The TFDS-prepared dataset in ``data_dir`` (``<data_dir>/<tfds_name>/<version>/``).
3. Preparing it with TFDS: for ``fashion_mnist`` from the Debian package
   ``dataset-fashion-mnist`` (real files, no network); otherwise a normal TFDS download, tried
   only if the network answers within a few seconds.
4. Otherwise :class:`DatasetUnavailableError`, saying what was looked for where, and how to
   get it.

TensorFlow / TFDS are imported lazily (:func:`import_tfds`), only in steps 2-3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import importlib.resources.abc  # makes `importlib.resources.abc` an attribute (see import_tfds)
import importlib.util
import logging
import os
import socket
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from signticket.data.errors import DatasetUnavailableError
from signticket.data.registry import DatasetSpec
from signticket.errors import require

log = logging.getLogger(__name__)

#: Environment variable naming the data directory (after the ``data_dir`` argument).
DATA_DIR_ENV = "SIGNTICKET_DATA_DIR"
#: Set to 1 to never try a download (as if there were no internet).
OFFLINE_ENV = "SIGNTICKET_OFFLINE"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
CACHE_SUBDIR = "signticket_cache"

#: Where the Debian package ``dataset-fashion-mnist`` installs the original IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# Host TFDS downloads from (and hosts its prepared datasets on); used only as a reachability probe.
_PROBE_ADDRESS = ("storage.googleapis.com", 443)


# -- paths ---------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$SIGNTICKET_DATA_DIR``, else ``~/tensorflow_datasets`` (absolute)."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().absolute()


def cache_path(data_dir: Path, name: str, split: str) -> Path:
    """Where the decoded arrays of ``name``/``split`` are cached."""
    return data_dir / CACHE_SUBDIR / f"{name}_{split}.npz"


def looks_prepared(data_dir: Path, tfds_name: str) -> bool:
    """Whether ``data_dir`` holds a finished TFDS preparation of ``tfds_name`` (any version).

    A filesystem check, so "not there" is known without importing TensorFlow. TFDS writes into
    an ``incomplete.*`` folder and renames it when done, so those are skipped.
    """
    root = data_dir / tfds_name
    # <version>/dataset_info.json, or <config>/<version>/dataset_info.json
    for pattern in ("*/dataset_info.json", "*/*/dataset_info.json"):
        for info in root.glob(pattern):
            if not any(p.startswith("incomplete") for p in info.relative_to(root).parts):
                return True
    return False


def debian_fashion_mnist_dir() -> Path | None:
    """The Debian Fashion-MNIST folder if it has all four files, else ``None``."""
    d = Path(DEBIAN_FASHION_MNIST_DIR)
    return d if all((d / f).is_file() for f in FASHION_MNIST_FILES) else None


# -- network ---------------------------------------------------------------------------------------


def internet_available(timeout: float = 3.0) -> bool:
    """Whether TFDS's download host answers within ``timeout`` seconds.

    Runs in a daemon thread because name resolution ignores socket timeouts and can otherwise
    block for a long time on a machine without network. ``SIGNTICKET_OFFLINE=1`` forces False.
    """
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(_PROBE_ADDRESS, timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, name="signticket-net-probe", daemon=True)
    thread.start()
    thread.join(2 * timeout)
    return bool(ok)


# -- errors ----------------------------------------------------------------------------------------


def unavailable(name: str, tfds_name: str, data_dir: Path, reason: str) -> DatasetUnavailableError:
    """The error for a dataset that cannot be had here, with how to get it."""
    cache = data_dir / CACHE_SUBDIR
    msg = (
        f"dataset {name!r} is not available: {reason}. TFDS looked in data_dir={data_dir} "
        f"(for {data_dir / tfds_name}) and signticket's cache {cache}. To get it, run once on a "
        f"machine with internet: `python -m signticket.data.prepare {name} --data-dir {data_dir}`, "
        f"then copy {data_dir / tfds_name} (or {cache}/{name}_*.npz) into this machine's data dir "
        f"(--data-dir, ${DATA_DIR_ENV}, default {DEFAULT_DATA_DIR})."
    )
    if name == "fashion_mnist":
        msg += (
            " Or, offline: `apt-get install -y dataset-fashion-mnist` (real Fashion-MNIST files in "
            f"{DEBIAN_FASHION_MNIST_DIR}), after which it is prepared here automatically."
        )
    return DatasetUnavailableError(msg)


# -- TFDS -----------------------------------------------------------------------------------------


def import_tfds() -> Any:
    """Import ``tensorflow_datasets`` (and TensorFlow) on first need, set up for our use."""
    # Quiet TensorFlow's C++ start-up logging unless the user asked for it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TFDS 4.9.x's DatasetBuilder.code_path uses the `importlib_resources` backport, which newer
    # etils no longer installs; without it every builder that looks up its checksums (i.e. every
    # preparation) fails with ModuleNotFoundError. On Python >= 3.11 the standard library module
    # has the same API (`abc.Traversable`), so stand it in when the backport is missing.
    if "importlib_resources" not in sys.modules and not importlib.util.find_spec(
        "importlib_resources"
    ):
        sys.modules["importlib_resources"] = importlib.resources
    purpose = "datasets (TFDS, prepared with TensorFlow)"
    tf = require("tensorflow", "data", purpose)
    tfds = require("tensorflow_datasets", "data", purpose)

    # JAX owns the accelerators: keep TensorFlow (only used for reading data) off them so it
    # does not reserve GPU memory. Fails harmlessly if TF already initialized its devices.
    with contextlib.suppress(RuntimeError, ValueError):
        tf.config.set_visible_devices([], "GPU")
    # signticket's own builders (datasets TFDS does not have), so tfds.builder finds them.
    from signticket.data import tiny_imagenet

    tiny_imagenet.builder_class(tfds)
    return tfds


def _redirect_checksum_registration(builder: Any, checksums_file: Path) -> None:
    """Make ``register_checksums=True`` record into ``checksums_file``, not TFDS's own files.

    TFDS's ``register_checksums`` writes the observed checksums into the checksums file that
    ships inside the TFDS package (``tensorflow_datasets/url_checksums/<name>.txt``). That either
    fails (read-only install) or, worse, silently replaces the official checksums with the
    Debian files' ones for every other user of that installation, so a later real download
    would fail validation. So the download manager this builder creates records elsewhere.
    Uses TFDS internals (``_make_download_manager`` and two attributes of the manager); where
    they are missing, TFDS's documented behaviour is left as is.
    """
    original = getattr(builder, "_make_download_manager", None)
    if original is None:
        return

    def make_download_manager(download_dir: Any, download_config: Any) -> Any:
        if not download_config.register_checksums:
            return original(download_dir=download_dir, download_config=download_config)
        # Built without registration so TFDS neither validates nor touches its package file...
        dm = original(
            download_dir=download_dir,
            download_config=dataclasses.replace(download_config, register_checksums=False),
        )
        if not (hasattr(dm, "_register_checksums") and hasattr(dm, "_register_checksums_path")):
            return original(download_dir=download_dir, download_config=download_config)
        # ...then switched to registering (which skips validation) into our own file.
        checksums_file.parent.mkdir(parents=True, exist_ok=True)
        from etils import epath

        dm._register_checksums = True
        dm._register_checksums_path = epath.Path(checksums_file)
        return dm

    builder._make_download_manager = make_download_manager


def prepare_from_manual_dir(
    builder: Any, manual_dir: Path, data_dir: Path, *, register_checksums: bool
) -> None:
    """``builder.download_and_prepare`` from files already in ``manual_dir`` (no network).

    TFDS finds a manually downloaded file as ``manual_dir / <filename>``, where the filename is
    the one recorded for its URL in TFDS's checksums (the URL's basename for Fashion-MNIST).
    ``register_checksums`` accepts files whose bytes differ from the recorded download (the
    Debian files were re-compressed; the decoded images are the originals).
    """
    tfds = import_tfds()
    if register_checksums:
        _redirect_checksum_registration(
            builder, data_dir / CACHE_SUBDIR / "checksums" / f"{builder.name}.txt"
        )
    config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir),
        register_checksums=register_checksums,
        # Checking GCS for a pre-built copy needs the network; these files are local.
        try_download_gcs=False,
    )
    builder.download_and_prepare(download_config=config)


def default_manual_dir(data_dir: Path) -> Path:
    """TFDS's default folder for manually downloaded files."""
    return data_dir / "downloads" / "manual"


def manual_download_error(spec: DatasetSpec, data_dir: Path, manual: Path
                          ) -> DatasetUnavailableError:
    """The error for a manually downloaded dataset (``spec.manual_files``) that is neither
    prepared nor downloaded: the exact commands that get it."""
    return DatasetUnavailableError(
        f"dataset {spec.name!r} is not available: TFDS looked in data_dir={data_dir} (for "
        f"{data_dir / spec.tfds_name}) and found no prepared copy, and the manual dir {manual} "
        f"has none of {', '.join(spec.manual_files)}. TFDS cannot download it: run "
        f"`mkdir -p {manual} && wget {spec.download_url} -P {manual}`, then "
        f"`python -m signticket.data.prepare {spec.name} --data-dir {data_dir}` (or just "
        f"train: the first load prepares it); or copy a prepared {data_dir / spec.tfds_name} "
        f"from another machine."
    )


def _manual_source(spec: DatasetSpec, data_dir: Path, manual_dir: Path | None
                   ) -> Path | None:
    """The manual dir when it holds one of ``spec.manual_files``, else ``None``."""
    manual = manual_dir or default_manual_dir(data_dir)
    return manual if any((manual / f).exists() for f in spec.manual_files) else None


def ensure_prepared(spec: DatasetSpec, data_dir: Path, *, manual_dir: Path | None = None) -> Any:
    """A TFDS builder for ``spec`` whose data is prepared in ``data_dir``, preparing it if needed.

    Raises :class:`DatasetUnavailableError` quickly (without importing TensorFlow) when it is
    not prepared, cannot be made from local files, and the network does not answer (or, for
    a dataset downloaded by hand, ``spec.manual_files``, is not in the manual dir).
    """
    asked_manual_dir = manual_dir or default_manual_dir(data_dir)
    if spec.manual_files:
        manual_dir = _manual_source(spec, data_dir, manual_dir)
        if manual_dir is None and not looks_prepared(data_dir, spec.tfds_name):
            raise manual_download_error(spec, data_dir, asked_manual_dir)
    debian = debian_fashion_mnist_dir() if spec.tfds_name == "fashion_mnist" else None
    local_source = manual_dir or debian
    if not looks_prepared(data_dir, spec.tfds_name) and local_source is None:
        if not internet_available():
            raise unavailable(
                spec.name,
                spec.tfds_name,
                data_dir,
                "it is not prepared there and there is no internet connection",
            )
    tfds = import_tfds()
    builder = tfds.builder(spec.tfds_name, data_dir=str(data_dir))
    if builder.is_prepared():
        return builder
    try:
        if local_source is not None:
            log.info("preparing %s with TFDS from %s", spec.tfds_name, local_source)
            prepare_from_manual_dir(
                builder, local_source, data_dir, register_checksums=local_source == debian
            )
        elif spec.manual_files:
            raise manual_download_error(spec, data_dir, asked_manual_dir)
        elif internet_available():
            log.info("downloading and preparing %s with TFDS into %s", spec.tfds_name, data_dir)
            builder.download_and_prepare()
        else:
            raise unavailable(
                spec.name,
                spec.tfds_name,
                data_dir,
                "it is not prepared there and there is no internet connection",
            )
    except DatasetUnavailableError:
        raise
    except Exception as e:  # TFDS raises many kinds (network, checksums, manual files, ...)
        if spec.manual_files:
            raise DatasetUnavailableError(
                f"dataset {spec.name!r}: TFDS could not prepare it from {local_source} "
                f"({type(e).__name__}: {e}); that folder must hold one of "
                f"{', '.join(spec.manual_files)} as downloaded from {spec.download_url}"
            ) from e
        raise unavailable(
            spec.name,
            spec.tfds_name,
            data_dir,
            f"TFDS could not prepare it ({type(e).__name__}: {e})",
        ) from e
    return builder


# -- cache -----------------------------------------------------------------------------------------


def read_cache(path: Path, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """Cached ``(images, labels)``, or ``None`` if missing or unusable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        log.warning("ignoring unreadable cache %s (%s)", path, e)
        return None
    if (
        images.dtype != np.uint8
        or images.shape[1:] != tuple(image_shape)
        or (labels.shape != images.shape[:1])
    ):
        log.warning(
            "ignoring cache %s with unexpected shapes %s, %s", path, images.shape, labels.shape
        )
        return None
    return images, labels.astype(np.int32, copy=False)


def write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write the arrays atomically (temp file + rename): readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # Uncompressed: loading is then just a read, which is the point of the cache.
            np.savez(f, images=images, labels=labels)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is as shareable as the data
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _lock(data_dir: Path, name: str) -> Iterator[None]:
    """An exclusive lock per dataset, so concurrent processes (pytest -n, setup scripts) don't
    prepare the same dataset at once. A no-op where the data dir is read-only."""
    try:
        import fcntl

        lock_dir = data_dir / CACHE_SUBDIR
        lock_dir.mkdir(parents=True, exist_ok=True)
        f = open(lock_dir / f".{name}.lock", "a")  # closed below
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
    finally:
        f.close()  # releases the lock


def _load_cached_splits(spec: DatasetSpec, data_dir: Path) -> dict[str, tuple] | None:
    splits = {}
    for split in (spec.train_split, spec.test_split):
        arrays = read_cache(cache_path(data_dir, spec.name, split), spec.image_shape)
        if arrays is None:
            return None
        splits[split] = arrays
    return splits


def load_arrays(spec: DatasetSpec, data_dir: Path, *, manual_dir: Path | None = None
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (uint8 NHWC images, int32 labels)}`` for the train and test splits of ``spec``.

    From the npz cache when present (no TensorFlow import), else via TFDS (prepared from
    ``manual_dir`` where the dataset is downloaded by hand), then cached.
    """
    splits = _load_cached_splits(spec, data_dir)
    if splits is not None:
        return splits
    with _lock(data_dir, spec.name):
        splits = _load_cached_splits(spec, data_dir)  # another process may have just built it
        if splits is not None:
            return splits
        builder = ensure_prepared(spec, data_dir, manual_dir=manual_dir)
        tfds = import_tfds()
        splits = {}
        for split in (spec.train_split, spec.test_split):
            # Batches, not batch_size=-1 (one batch of the split's recorded size): that size
            # comes from the builder's metadata, which a reader without it (TFDS's mock
            # builder) does not have.
            parts = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=4096)))
            images = np.ascontiguousarray(np.concatenate([p["image"] for p in parts]),
                                          dtype=np.uint8)
            labels = np.concatenate([p["label"] for p in parts]).astype(np.int32)
            if images.shape[1:] != spec.image_shape:
                raise ValueError(
                    f"{spec.name} {split}: TFDS gave images of shape "
                    f"{images.shape[1:]}, expected {spec.image_shape}"
                )
            try:
                write_cache(cache_path(data_dir, spec.name, split), images, labels)
            except OSError as e:  # e.g. a read-only shared data dir: still usable, just slower
                log.warning("could not cache %s %s (%s)", spec.name, split, e)
            splits[split] = (images, labels)
        return splits


def prepare(spec: DatasetSpec, data_dir: Path, *, manual_dir: Path | None = None) -> list[Path]:
    """Prepare ``spec`` in ``data_dir`` (and cache it, if held in memory); the paths written."""
    if spec.streaming:
        with _lock(data_dir, spec.name):
            builder = ensure_prepared(spec, data_dir, manual_dir=manual_dir)
        return [Path(str(builder.data_dir))]
    load_arrays(spec, data_dir, manual_dir=manual_dir)
    return [cache_path(data_dir, spec.name, s) for s in (spec.train_split, spec.test_split)]
