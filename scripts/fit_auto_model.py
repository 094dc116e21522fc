#!/usr/bin/env python3
"""Refits the input side's time model behind `ForwardStrategy::Auto` (src/clustered/cost.rs).

Runs the `strategy_table` example (dense and input side, VGG-16/ResNet-18 3×3 shapes) over
K = 16, 64, 256, random-normal and skewed weights, batch 1 and 8, on the thread counts given,
and fits by least squares

    input_time / dense_time ≈ A·ρ·w + B·w + C / Cout

where ρ = ΣV/(Cout·Cin), w the input side's padding factor and Cout the output channels
(clamped to 64–512). Prints the coefficients, the r.m.s. relative error and, per measured pair,
whether a threshold of 0.8 on the predicted ratio would pick the faster strategy.

Usage: python3 scripts/fit_auto_model.py [--threads 1,2] [--reps 7] [--from FILE]
  --from FILE  refit from a saved measurement file (written to target/auto-model.txt) instead
               of measuring again. Needs numpy.
"""
import argparse
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(threads, reps):
    subprocess.run(["cargo", "build", "--release", "--example", "strategy_table"], cwd=ROOT,
                   check=True)
    exe = os.path.join(ROOT, "target", "release", "examples", "strategy_table")
    lines = []
    for t in threads:
        for batch in (8, 1):
            for weights in ("skewed", "normal"):
                out = subprocess.run(
                    [exe, "--batch", str(batch), "--k", "16,64,256", "--weights", weights,
                     "--threads", str(t), "--reps", str(reps), "--strategies", "dense,input"],
                    cwd=ROOT, check=True, capture_output=True, text=True).stdout
                print(out, file=sys.stderr)
                for line in out.splitlines():
                    f = line.split()
                    if len(f) >= 8 and f[0] in ("vgg", "resnet"):
                        lines.append(f"{t} {batch} {weights} {line}")
    return lines


def parse(lines):
    rows = []
    for line in lines:
        f = line.split()
        threads, batch, _weights, _net, shape = f[0], f[1], f[2], f[3], f[4]
        k, rho, pad, dense, inp = int(f[5]), float(f[6]), float(f[7]), float(f[8]), float(f[9])
        cout = int(shape.split("@")[0])
        rows.append((rho, pad, cout, dense, inp, int(threads), int(batch), shape, k))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--from", dest="source")
    args = ap.parse_args()
    if args.source:
        with open(args.source) as f:
            lines = [l.rstrip("\n") for l in f if l.strip()]
    else:
        lines = measure([int(t) for t in args.threads.split(",")], args.reps)
        os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
        with open(os.path.join(ROOT, "target", "auto-model.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    rows = parse(lines)
    x = np.array([[r[0] * r[1], r[1], 1.0 / min(max(r[2], 64), 512)] for r in rows])
    y = np.array([r[4] / r[3] for r in rows])
    # Relative least squares: each pair weighs by its own ratio.
    coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    pred = x @ coef
    rms = float(np.sqrt(np.mean(((pred - y) / y) ** 2)))
    print(f"pairs: {len(rows)}")
    print(f"A = {coef[0]:.3f}, B = {coef[1]:.3f}, C = {coef[2]:.2f}; r.m.s. relative error "
          f"{rms:.1%}")
    wrong = [(r, p, yy) for r, p, yy in zip(rows, pred, y) if (p < 0.8) != (yy < 1.0)]
    print(f"threshold 0.8 picks the slower strategy in {len(wrong)} of {len(rows)} pairs:")
    for r, p, yy in wrong:
        print(f"  {r[7]} K={r[8]} b{r[6]} t{r[5]}: predicted {p:.2f}, measured {yy:.2f}")


if __name__ == "__main__":
    main()
