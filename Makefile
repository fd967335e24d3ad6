# Quick start:  make demo   (install + export default model + tag a real clip)
#               make test   (install + lint + full test suite)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
CLIP   ?= ../shared/videos/mmaction2_demo_demo.mp4

.PHONY: install demo test lint system-deps bench compose-test

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

# Build the images, start the compose CPU profile, tag an upload, run batches (one with an extract worker restart),
# check exactly-once results, tear down (down -v). Starts (and stops) a Docker engine when root and none runs;
# builds stand-in base images when Docker Hub is unreachable. docs/deploy.md. Exit 77: no engine can start here.
compose-test:
	bash scripts/compose_test.sh
