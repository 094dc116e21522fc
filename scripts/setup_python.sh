#!/usr/bin/env bash
# Creates target/pyenv with numpy and safetensors from PyPI, for the Python cross-checks
# (tests/suite/format.rs runs scripts/check_decompressed.py with it; without it the check is skipped
# with a printed reason). Idempotent; `.ci/run` calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x target/pyenv/bin/python ]; then
    python3 -m venv target/pyenv
fi
target/pyenv/bin/python -m pip install --quiet --disable-pip-version-check numpy safetensors
target/pyenv/bin/python -c 'import numpy, safetensors; print("python check env:", "numpy", numpy.__version__, "safetensors", safetensors.__version__)'
