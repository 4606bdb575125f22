#!/usr/bin/env bash
# Create .venv and install mmdata with its test extras (torch resolves to the machine's local build).
# --with-browser also installs Debian's headless Chromium for the report's browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
if [ "${1:-}" = "--with-browser" ]; then
    bash scripts/setup-browser.sh
fi
