PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
export EDGECONV_SAMPLE ?= $(SHARED)/data/imagenet-sample

.PHONY: install test lint clean paper bench-build fixtures arm64-board

install: $(BIN)/edgeconv

$(BIN)/edgeconv: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

# a real trained swish+SE model for the accuracy gate: tinynet-e on scikit-learn's digits (~1 min)
fixtures: install
	$(BIN)/python tools/train_digits.py --out build/fixtures

# the arm64 board stand-in (Debian arm64 userland + aarch64 wheels, run under proot + QEMU), cached
# in build/arm64-board/<hash of its inputs>; the tests build it themselves when it is missing
arm64-board: install
	$(BIN)/python tools/arm64_board.py --check

test: install fixtures
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check edgeconv tests benchmarks tools

paper: install
	$(BIN)/python benchmarks/paper.py

bench-build: install
	$(BIN)/python benchmarks/build.py

clean:
	rm -rf build .pytest_cache
