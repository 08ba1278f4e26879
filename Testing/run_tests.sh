#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: creates its own virtual environment, installs the
# project with its test dependencies, and runs pytest.  README's second command; .ci/run calls it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LEARNGN_TEST_VENV:-$root/.venv-test}"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# A pinned CPU-capable torch first, so the project's "torch>=2.0" is already satisfied.
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet "$root[test]"

# The shared real data, when it sits beside the checkout, enables the data tests.
if [ -z "${LEARNGN_DATA:-}" ] && [ -d "$root/../shared/data" ]; then
    export LEARNGN_DATA="$root/../shared/data"
fi
cd "$root"
exec "$venv/bin/python" -m pytest Testing -q -rs "$@"
