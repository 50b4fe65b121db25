"""Experiment scripts: each reproduces a paper table from the configs in ``configs/``."""
