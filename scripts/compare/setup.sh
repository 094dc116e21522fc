#!/usr/bin/env bash
# Creates the Python environment of the comparison harness: a venv at target/compare-venv with
# torch, scikit-learn, numpy and threadpoolctl. Idempotent: an existing venv is reused and pip
# only installs what is missing.
#
# torch comes from PyPI (the CPU-only index download.pytorch.org may not be reachable). On
# Linux x86-64 the PyPI wheel also pulls the CUDA runtime wheels; they are large but unused here
# (the comparison runs on the CPU only).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/target/compare-venv"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating venv $venv"
    mkdir -p "$root/target"
    "$python" -m venv "$venv"
fi

packages=(torch scikit-learn numpy threadpoolctl)

# Skip pip entirely when every package already imports (fast re-runs, no network).
if "$venv/bin/python" -c 'import torch, sklearn, numpy, threadpoolctl' 2>/dev/null; then
    echo "venv $venv already has: ${packages[*]}"
else
    "$venv/bin/python" -m pip install --upgrade pip
    "$venv/bin/python" -m pip install "${packages[@]}"
fi

"$venv/bin/python" - <<'EOF'
import numpy, sklearn, threadpoolctl, torch
print(f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, "
      f"numpy {numpy.__version__}, threadpoolctl {threadpoolctl.__version__}")
EOF
