# Quick start:  make demo   (install + export default model + tag a real clip)
#               make test   (install + lint + full test suite)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
CLIP   ?= ../shared/videos/mmaction2_demo_demo.mp4

.PHONY: install demo test lint system-deps bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned to 2.13.0 (CPU wheel); everything else from pyproject.toml.
install: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

demo: install
	$(BIN)/videotag setup
	$(BIN)/videotag tag "$(CLIP)" --out out/demo

system-deps:
	bash scripts/install-system-deps.sh

lint: install
	$(BIN)/ruff check .

test: install system-deps lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_extract.py ../shared/videos
