#!/usr/bin/env python3
"""Writes the fixtures of tests/suite/image_data.rs: image folders (PNG and JPEG, greyscale and
RGB) under tests/data/image_folder/ and NumPy arrays under tests/data/npy/, each with the arrays
the Rust readers must produce, computed here independently with Pillow and numpy.

Run with an environment that has numpy and Pillow (CI does not need either: the outputs are
committed):

    bash scripts/setup_python.sh   # numpy
    python3 -m venv target/fixture-env && target/fixture-env/bin/pip install numpy Pillow
    target/fixture-env/bin/python scripts/data/make_fixtures.py

The expected image-folder arrays follow torchvision: `ImageFolder`'s class and file order
(sorted class directories, `sorted(os.walk(...))`, sorted file names), its loader's
`Image.convert("RGB")`, `transforms.Grayscale` (`convert("L")`), `ToTensor` (v / 255) and
`Normalize` ((x - mean) / std). Deterministic: a fixed seed, and the files are only rewritten.
"""

import os
import shutil

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data")
FOLDER = os.path.join(ROOT, "image_folder")
NPY = os.path.join(ROOT, "npy")

W, H = 8, 6  # every image is 8 wide, 6 high
RGB_MEAN = [0.5, 0.4, 0.3]
RGB_STD = [0.25, 0.2, 0.3]
GREY_MEAN = [0.45]
GREY_STD = [0.22]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

rng = np.random.default_rng(20261202)


def smooth(channels, w=W, h=H):
    """A smooth gradient plus mild noise (JPEG-friendly), uint8 of shape (h, w, channels)."""
    y, x = np.mgrid[0:h, 0:w]
    planes = []
    for c in range(channels):
        base = 30 + 25 * x + 12 * y + 40 * c
        planes.append(base + rng.integers(-6, 7, size=(h, w)))
    return np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)


def save(path, array, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "L" if array.shape[-1] == 1 else "RGB"
    Image.fromarray(array[..., 0] if mode == "L" else array, mode).save(path, **kwargs)


def torchvision_files(root):
    """torchvision's `find_classes` + `make_dataset`, minus hidden files and directories."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    rows = []
    for label, cls in enumerate(classes):
        for dirpath, dirnames, fnames in sorted(os.walk(os.path.join(root, cls))):
            if any(part.startswith(".") for part in os.path.relpath(dirpath, root).split(os.sep)):
                continue
            for fname in sorted(fnames):
                if fname.startswith(".") or not fname.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                rows.append((os.path.join(dirpath, fname), label))
    return classes, rows


def expected(rows, mode, mean, std):
    out = []
    for path, _ in rows:
        with Image.open(path) as img:
            img = img.convert("RGB")  # torchvision's pil_loader
            if mode == "L":
                img = img.convert("L")  # transforms.Grayscale(1)
            a = np.asarray(img, dtype=np.float64) / 255.0
        if a.ndim == 2:
            a = a[:, :, None]
        a = (a - np.array(mean)) / np.array(std)
        out.append(a.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def image_folders():
    if os.path.isdir(FOLDER):
        shutil.rmtree(FOLDER)
    mixed = os.path.join(FOLDER, "mixed")
    # Class "b_circle" is written first and file "10" sorts before "2": the order must come from
    # sorting, not from the directory listing.
    save(os.path.join(mixed, "b_circle", "2.png"), smooth(3))
    save(os.path.join(mixed, "b_circle", "10.png"), smooth(3))
    save(os.path.join(mixed, "b_circle", "photo.JPG"), smooth(3), quality=90)  # 4:2:0 chroma
    save(os.path.join(mixed, "a_square", "grey.png"), smooth(1))
    save(os.path.join(mixed, "a_square", "rgb.png"), smooth(3))
    save(os.path.join(mixed, "a_square", "grey.jpeg"), smooth(1), quality=90)
    save(os.path.join(mixed, "c_nested", "top.png"), smooth(3))
    save(os.path.join(mixed, "c_nested", "deeper", "inner.jpg"), smooth(3), quality=95, subsampling=0)
    # Skipped: not images, hidden (a macOS resource fork that is not a valid JPEG), hidden dir.
    with open(os.path.join(mixed, "a_square", "notes.txt"), "w") as f:
        f.write("not an image\n")
    with open(os.path.join(mixed, "a_square", "._grey.jpeg"), "wb") as f:
        f.write(b"\x00\x05\x16\x07 AppleDouble, not a JPEG")
    save(os.path.join(mixed, ".cache", "thumb.png"), smooth(3))
    save(os.path.join(mixed, "b_circle", ".hidden", "x.png"), smooth(3, w=3, h=3))

    classes, rows = torchvision_files(mixed)
    np.save(os.path.join(FOLDER, "mixed_rgb.npy"), expected(rows, "RGB", RGB_MEAN, RGB_STD))
    np.save(os.path.join(FOLDER, "mixed_grey.npy"), expected(rows, "L", GREY_MEAN, GREY_STD))
    np.save(os.path.join(FOLDER, "mixed_labels.npy"), np.array([l for _, l in rows], dtype=np.int64))
    with open(os.path.join(FOLDER, "mixed_files.txt"), "w") as f:
        for path, _ in rows:
            f.write(os.path.relpath(path, mixed).replace(os.sep, "/") + "\n")
    with open(os.path.join(FOLDER, "mixed_classes.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")

    odd = os.path.join(FOLDER, "odd_size")
    save(os.path.join(odd, "a", "first.png"), smooth(3))
    save(os.path.join(odd, "b", "second.png"), smooth(3))
    save(os.path.join(odd, "b", "wide.png"), smooth(3, w=W + 1))  # 9 x 6

    corrupt = os.path.join(FOLDER, "corrupt")
    save(os.path.join(corrupt, "a", "good.png"), smooth(3))
    save(os.path.join(corrupt, "a", "truncated.png"), smooth(3))
    with open(os.path.join(corrupt, "a", "truncated.png"), "r+b") as f:
        f.truncate(40)  # the signature and IHDR survive, the image data does not


def npy_fixtures():
    if os.path.isdir(NPY):
        shutil.rmtree(NPY)
    os.makedirs(NPY)
    n, c, h, w = 4, 2, 3, 5
    u8 = rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    f32 = rng.standard_normal((n, c, h, w)).astype(np.float32)
    labels = np.array([2, 0, 1, 2], dtype=np.int64)
    mean, std = [0.3, 0.6], [0.2, 0.5]

    np.save(os.path.join(NPY, "images_u8.npy"), u8)
    np.save(os.path.join(NPY, "images_f32.npy"), f32)
    np.save(os.path.join(NPY, "images_f32_fortran.npy"), np.asfortranarray(f32))
    np.save(os.path.join(NPY, "images_f32_big_endian.npy"), f32.astype(">f4"))
    np.save(os.path.join(NPY, "images_f64.npy"), f32.astype(np.float64) * 0.5)
    np.save(os.path.join(NPY, "labels_i64.npy"), labels)
    np.save(os.path.join(NPY, "labels_i32.npy"), labels.astype(np.int32))
    np.save(os.path.join(NPY, "labels_u8.npy"), labels.astype(np.uint8))
    # Expected contents: u8 normalised per channel ((v / 255 - mean) / std), floats as they are.
    norm = (u8.astype(np.float64) / 255.0 - np.array(mean)[None, :, None, None]) / np.array(std)[
        None, :, None, None
    ]
    np.save(os.path.join(NPY, "expected_u8_normalised.npy"), norm.astype(np.float32))
    np.save(os.path.join(NPY, "expected_f64_as_f32.npy"), (f32.astype(np.float64) * 0.5).astype(np.float32))
    # Refusals.
    np.save(os.path.join(NPY, "labels_short.npy"), labels[:3])
    np.save(os.path.join(NPY, "labels_negative.npy"), np.array([2, 0, -1, 2], dtype=np.int64))
    np.save(os.path.join(NPY, "labels_rank2.npy"), labels.reshape(2, 2))
    np.save(os.path.join(NPY, "images_rank3.npy"), f32[:, 0])
    np.save(os.path.join(NPY, "images_i16.npy"), u8.astype(np.int16))


if __name__ == "__main__":
    image_folders()
    npy_fixtures()
    print("fixtures written under", os.path.normpath(ROOT))
