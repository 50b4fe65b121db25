"""The one error the data layer raises when a dataset cannot be had on this machine."""

from __future__ import annotations


class DatasetUnavailableError(ValueError):
    """A dataset is neither prepared nor cached locally, and cannot be fetched here.

    The message says which dataset, where TFDS looked (its ``data_dir``) and how to get it.
    A ``ValueError`` so that callers (the CLI) that report bad inputs also report this cleanly.
    """
