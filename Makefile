# The two commands a newcomer needs; both set up whatever they need first.
PYTHON ?= python3
export PYTHON

.PHONY: setup quickstart test lint bench

setup:
	bash scripts/setup.sh

quickstart: setup
	$(PYTHON) -m signticket.cli quickstart

test: setup
	$(PYTHON) -m ruff check signticket tests bench
	$(PYTHON) -m pytest -q -n 2 --maxschedchunk 1 --durations=40

# One table + bench/results/suite.json; PyTorch baselines need the extra: pip install -e ".[bench]"
bench: setup
	$(PYTHON) -m bench.suite
