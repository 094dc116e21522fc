"""Checks a dense safetensors file written by `clustered-conv decompress` (or
`CompressedModel::to_dense_safetensors`) with the Python `safetensors` package, the way a
PyTorch user's `load_state_dict` would see it.

usage: check_decompressed.py DENSE.safetensors EXPECTED.json

EXPECTED.json maps each tensor name to {"dtype": "float32" | "float16" | ..., "shape": [...],
"values": [...] (flattened, row-major)}. Every tensor must be present with that dtype and
shape and values equal within float16 rounding for float16 tensors, exactly otherwise; no
other tensor may be present. Prints "ok" and exits 0, or prints the mismatch and exits 1.
"""

import json
import sys

import numpy as np
from safetensors.numpy import load_file


def main() -> int:
    dense_path, expected_path = sys.argv[1], sys.argv[2]
    tensors = load_file(dense_path)
    with open(expected_path) as f:
        expected = json.load(f)
    if sorted(tensors) != sorted(expected):
        print(f"names differ: file {sorted(tensors)} expected {sorted(expected)}")
        return 1
    for name, want in expected.items():
        got = tensors[name]
        if str(got.dtype) != want["dtype"] or list(got.shape) != want["shape"]:
            print(f"{name}: {got.dtype} {list(got.shape)}, expected {want['dtype']} {want['shape']}")
            return 1
        values = np.asarray(want["values"], dtype=np.float64).astype(got.dtype)
        if not np.array_equal(got.reshape(-1), values):
            worst = np.max(np.abs(got.reshape(-1).astype(np.float64) - values.astype(np.float64)))
            print(f"{name}: values differ (max abs difference {worst})")
            return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
