#!/usr/bin/env bash
# The test command: installs what the suite and its tests need and the project itself (editable, so the tests
# import this checkout's package), then runs pytest.
# Usage: bash test/run_tests.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> 1. installing requirements-test.txt"
python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
echo "==> 2. installing this project (pip install -e .)"
python3 -m pip install --quiet --disable-pip-version-check --no-deps -e .

echo "==> 3. running pytest"
python3 -m pytest -q --durations=25 tests "$@"
