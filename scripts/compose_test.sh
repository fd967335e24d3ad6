#!/usr/bin/env bash
# `make compose-test`: build, start, exercise and tear down the compose deployment (scripts/compose_test.py says
# how). Exit status 0 passed, 1 failed, 77 no Docker engine can be started here. Options: compose_test.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/compose_test.py "$@"
