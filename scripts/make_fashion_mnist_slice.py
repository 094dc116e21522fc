#!/usr/bin/env python3
"""Writes the Fashion-MNIST slice vendored in data/fashion-mnist-slice/.

The first 6,000 training and the first 1,000 test images (and labels) of the full data set,
read from the Debian package `dataset-fashion-mnist` (apt-get install -y dataset-fashion-mnist),
written as gzipped IDX files with the same headers (only the item count differs).
Fashion-MNIST is MIT-licensed, (c) 2017 Zalando SE.

Run from the repository root: python3 scripts/make_fashion_mnist_slice.py
"""
import gzip
import hashlib
import pathlib
import struct

SOURCE = pathlib.Path("/usr/share/datasets/fashion-mnist")
TARGET = pathlib.Path("data/fashion-mnist-slice")
COUNTS = {"train": 6000, "t10k": 1000}


def slice_idx(raw: bytes, count: int) -> bytes:
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype == 0x08, "unsigned-byte IDX expected"
    dims = list(struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim]))
    item = 1
    for d in dims[1:]:
        item *= d
    header = raw[:4] + struct.pack(">" + "I" * ndim, count, *dims[1:])
    body = raw[4 + 4 * ndim : 4 + 4 * ndim + count * item]
    assert len(body) == count * item
    return header + body


def main() -> None:
    TARGET.mkdir(parents=True, exist_ok=True)
    for split, count in COUNTS.items():
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            name = f"{split}-{kind}"
            raw = gzip.decompress((SOURCE / f"{name}.gz").read_bytes())
            sliced = slice_idx(raw, count)
            # mtime=0: the same input always gives the same bytes.
            (TARGET / f"{name}.gz").write_bytes(gzip.compress(sliced, mtime=0))
            print(f"{hashlib.sha256(sliced).hexdigest()}  {name}")


if __name__ == "__main__":
    main()
