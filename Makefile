# The two commands the README gives: `make demo` and `make test`. Both create or refresh .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo clean-demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

# The main job on the embedded demo data: the degradation of deep plain nets (He et al. 2016),
# the CIFAR ResNets 20/32/44/56 x residual on/off x 3 seeds, then its report. Each depth's 6
# cells train as one packed model (--pack 6): 1.5x faster than alone on the 2-core CPU
# (docs/performance.md), where --pack auto packs nothing.
# Rerunning resumes (finished cells are kept); `make clean-demo` starts over.
DEMO_OUT ?= runs/demo

demo: $(STAMP)
	$(BIN)/resablate grid --family cifar_resnet --depths 20 32 44 56 --residual on off \
		--weights none --seeds 0 1 2 --recipe cifar_demo --data demo --pack 6 --out $(DEMO_OUT)
	$(BIN)/resablate report $(DEMO_OUT) --format html

clean-demo:
	rm -rf $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
