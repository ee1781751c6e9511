#!/usr/bin/env bash
# Fresh machine -> virtual environment -> dependencies from PyPI -> the example end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -e ".[example]"
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python examples/quickstart.py "$@"
