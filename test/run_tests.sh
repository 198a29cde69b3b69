#!/usr/bin/env bash
# The test command: installs what the suite and its tests need, then runs pytest.
# Usage: bash test/run_tests.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> 1. installing requirements-test.txt"
python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt

echo "==> 2. running pytest"
python3 -m pytest -q tests "$@"
