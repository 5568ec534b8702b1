# Two entry points, as the README's Quickstart uses them.
# `pip install torch==2.13.0` first so that a CPU-only machine gets the CPU build
# (a plain `torch` requirement would pull several GB of CUDA packages).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup demo test bench clean

$(BIN)/lifelong: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/lifelong

setup: $(BIN)/lifelong

# The forgetting story on the embedded digits, five steps of two classes: finetune forgets every
# earlier step; iCaRL, replaying 40 stored images, keeps most of them.
demo: setup
	$(BIN)/lifelong run --method finetune --benchmark digits --setting class --quiet $(ARGS)
	$(BIN)/lifelong run --method icarl --benchmark digits --setting class --memory 40 --quiet $(ARGS)

# OpenMP threads sleep when idle instead of spinning: on a busy shared machine spinning threads
# steal the cores the work needs (docs/benchmarks.md, "Threads").
test: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest $(ARGS)

bench: setup
	$(BIN)/python bench/loop_overhead.py
	$(BIN)/python bench/data_pipeline.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
