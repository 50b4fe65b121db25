"""Experiment scripts: each reproduces a paper table from configs in ``experiments/configs``."""
