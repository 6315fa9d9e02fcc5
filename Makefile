PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
export EDGECONV_SAMPLE ?= $(SHARED)/data/imagenet-sample

.PHONY: install test lint clean paper bench-build fixtures

install: $(BIN)/edgeconv

$(BIN)/edgeconv: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

# a real trained swish+SE model for the accuracy gate: tinynet-e on scikit-learn's digits (~1 min)
fixtures: install
	$(BIN)/python tools/train_digits.py --out build/fixtures

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
