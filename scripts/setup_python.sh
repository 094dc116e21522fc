#!/usr/bin/env bash
# Creates target/pyenv with numpy, safetensors and onnxruntime from PyPI, for the Python
# cross-checks (tests/suite/format.rs runs scripts/check_decompressed.py with it; tests/suite/onnx.rs runs
# scripts/onnx/run_onnxruntime.py with it; without it those checks are skipped with a printed
# reason). torch and onnx are not needed here: the reference models in tests/data/onnx/ are
# committed (scripts/onnx/make_models.py regenerates them with target/compare-venv).
# Idempotent; `.ci/run` calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x target/pyenv/bin/python ]; then
    python3 -m venv target/pyenv
fi
target/pyenv/bin/python -m pip install --quiet --disable-pip-version-check numpy safetensors onnxruntime
target/pyenv/bin/python -c 'import numpy, safetensors, onnxruntime; print("python check env:", "numpy", numpy.__version__, "safetensors", safetensors.__version__, "onnxruntime", onnxruntime.__version__)'
