#!/usr/bin/env python3
"""Refits the time models behind `ForwardStrategy::Auto` (src/clustered/cost.rs).

Runs the `strategy_table` example (VGG-16/ResNet-18 3×3 shapes) over K = 16, 64, 256,
random-normal and skewed weights, batch 1 and 8, on the thread counts given, and fits by
least squares, the input side relative to the dense `Conv2d` (column `conv`) and Winograd
relative to the clustered dense route (column `dense`, the time `Auto` weighs it against):

    input side:  input / conv    ≈ A·ρ·w + B·w + C / Cout
    Winograd:    winograd / dense ≈ φ·(D + E·16·b + F·Cin/512)

where ρ = ΣV/(Cout·Cin), w the input side's padding factor, Cout clamped to 64–512, φ the
Winograd tile waste (16·T / (OH·OW), T = ⌈OH/4⌉·⌈OW/4⌉ tiles per image), N the batch and
b the operand builds per tile: 1/(N·T) when the whole operand (36·C·C f32 values) fits
4 MiB and is built once per call, else max(1/(N·T), 1/64), once per block of at most 64
tiles.
Prints the coefficients, the r.m.s. relative errors, and, per measured row, Auto's time
relative to the fastest strategy (the `auto/best` column), flagging rows above 1.10.

Then replays `Auto`'s Winograd decision with the refitted coefficients under each tile gate
(`old`: tiles per image × min(Cin, Cout) ≥ 2048; `dense`: the dense `Conv2d`'s rule, which
also admits ≥ 128 channels each way on any map with ≥ 8 tiles in the call) on the measured
times, and prints how often each gate's pick is more than 1.10× the fastest strategy. The
replay takes the sharing prediction as the input side's (the table has no ΣU); rows whose
measured pick was not Winograd keep it when the replay does not pick Winograd.

The coefficients in cost.rs come from the last step: a grid search of (D, E, F) under the
`dense` gate that minimises the replayed mean auto/best. Given several measurement files, it
searches each and replays the winner on the others (held-out check).

Usage: python3 scripts/fit_auto_model.py [--threads 1,2] [--reps 5] [--from FILE[,FILE...]]
  --from FILES  refit from saved measurement files (each run writes target/auto-model.txt;
                copy it aside between runs) instead of measuring again. Needs numpy.
"""
import argparse
import math
import os
import re
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
                     "--threads", str(t), "--reps", str(reps)],
                    cwd=ROOT, check=True, capture_output=True, text=True).stdout
                print(out, file=sys.stderr)
                for line in out.splitlines():
                    f = line.split()
                    if f and f[0] == "layer":
                        lines.append(f"# threads batch weights {line}")
                    elif len(f) >= 12 and f[0] in ("vgg", "resnet"):
                        lines.append(f"{t} {batch} {weights} {line}")
    return lines


def parse(lines):
    """Rows as dicts: the table's columns by header name, plus threads, batch, weights."""
    rows, header = [], None
    for line in lines:
        f = line.split()
        if f[0] == "#":
            # "# threads batch weights layer K ΣV/CC pad conv dense ..."; a layer name is two
            # words ("vgg 64@32"), so the data rows have one more field than the header.
            header = ["threads", "batch", "weights", "net", "shape"] + f[5:]
            continue
        row = dict(zip(header, f))
        for key in ("threads", "batch", "K"):
            row[key] = int(row[key])
        for key in ("ΣV/CC", "pad", "conv", "dense", "input", "output", "winograd", "auto",
                    "auto/best"):
            row[key] = float(row[key])
        c, hw = (int(v) for v in row["shape"].split("@"))
        row["c"], row["hw"] = c, hw
        tiles = math.ceil(hw / 4) ** 2
        row["tiles"] = tiles
        row["phi"] = 16 * tiles / (hw * hw)
        rows.append(row)
    return rows


def fit(x, y):
    """Relative least squares (each row weighs by its own ratio); coefficients, r.m.s."""
    coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    pred = x @ coef
    return coef, float(np.sqrt(np.mean(((pred - y) / y) ** 2)))


def operand_builds_per_tile(r):
    """Operand builds per tile of a Winograd call: once per call when the whole operand
    (36·C·C f32 values) fits 4 MiB, else once per block of at most 64 tiles."""
    per_call = 1 / (r["tiles"] * r["batch"])
    return per_call if 36 * r["c"] * r["c"] * 4 <= 4 << 20 else max(per_call, 1 / 64)


def winograd_ratio(r, coef):
    """The fitted Winograd-over-dense-route ratio of a row."""
    d, e, f = coef
    return r["phi"] * (d + e * 16 * operand_builds_per_tile(r) + f * r["c"] / 512)


def gate(r, name):
    """Whether a tile gate admits Winograd on a row (Cin = Cout = c): `dense` mirrors
    `winograd_pays` in src/linalg/winograd.rs, `old` its first line alone."""
    enough = r["c"] >= 16 and r["tiles"] * r["c"] >= 2048
    if name == "old":
        return enough
    return (enough or r["c"] >= 128) and r["batch"] * r["tiles"] >= 8


def model_constants():
    """The `f64` constants of src/clustered/cost.rs by name (`DENSE_MAC`, `A`, …, `D`,
    `CLUSTERED_THRESHOLD`), so that the replay follows the committed model."""
    with open(os.path.join(ROOT, "src", "clustered", "cost.rs")) as f:
        text = f.read()
    found = re.findall(r"const (\w+): f64 = ([-0-9.e /*+]+);", text)
    return {name: float(eval(expr, {"__builtins__": {}})) for name, expr in found}


MODEL = model_constants()


def replay(rows, input_coef, wino_coef, gate_name):
    """Auto's pick per row under a gate (the cost model's `cheapest`, sharing as the input
    side) and its measured time over the fastest strategy's."""
    a, b, c_ = input_coef
    ratios = []
    for r in rows:
        pos = r["hw"] * r["hw"]
        dense = 1 + MODEL["DENSE_RECONSTRUCT"] / (r["batch"] * pos * MODEL["DENSE_MAC"])
        sharing = a * r["ΣV/CC"] * r["pad"] + b * r["pad"] + c_ / min(max(r["c"], 64), 512)
        eligible = sharing < MODEL["CLUSTERED_THRESHOLD"] * dense
        wino = winograd_ratio(r, wino_coef) * dense if gate(r, gate_name) else math.inf
        if wino < dense and not (eligible and sharing <= wino):
            pick = "winograd"
        elif r["auto_pick"] != "Winograd":
            pick = r["auto_pick"].lower().replace("side", "")
        else:
            pick = "input" if eligible else "dense"
        best = min(r[k] for k in ("dense", "input", "output", "winograd") if not math.isnan(r[k]))
        ratios.append((r[pick] / best, pick, r))
    return ratios


def print_replay(rows, input_coef, wino_coef):
    for name in ("old", "dense"):
        ratios = replay(rows, input_coef, wino_coef, name)
        over = [x for x in ratios if x[0] > 1.10]
        mean = float(np.mean([x[0] for x in ratios]))
        print(f"replay, gate {name}: mean auto/best {mean:.3f}; above 1.10 on {len(over)} of "
              f"{len(ratios)} rows; worst {max(x[0] for x in ratios):.2f}")
        for ratio, pick, r in sorted(over, key=lambda x: -x[0]):
            print(f"    {r['net']} {r['shape']:>7} K={r['K']:<3} b{r['batch']} t{r['threads']} "
                  f"{r['weights']:<6}: {pick:<8} {ratio:.2f}")


def replay_score(rows, input_coef, wino_coef, gate_name="dense"):
    """Mean replayed auto/best and the number of rows above 1.10."""
    ratios = [x[0] for x in replay(rows, input_coef, wino_coef, gate_name)]
    return float(np.mean(ratios)), sum(r > 1.10 for r in ratios)


def search(rows, input_coef):
    """(D, E, F) minimising the replayed mean auto/best under the `dense` gate."""
    grid = [(d, e, f) for d in np.arange(0.45, 0.7125, 0.025)
            for e in (0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5)
            for f in np.arange(-0.3, 0.125, 0.05)]
    return min(grid, key=lambda c: replay_score(rows, input_coef, c))


def print_search(sets, input_coef):
    for i, rows in enumerate(sets):
        best = search(rows, input_coef)
        mean, over = replay_score(rows, input_coef, best)
        print(f"search on set {i + 1}: D = {best[0]:.3f}, E = {best[1]:.2f}, F = {best[2]:.2f}; "
              f"mean auto/best {mean:.3f}, above 1.10 on {over} of {len(rows)}")
        for j, other in enumerate(sets):
            if j != i:
                mean, over = replay_score(other, input_coef, best)
                print(f"    replayed on set {j + 1}: mean {mean:.3f}, above 1.10 on {over} "
                      f"of {len(other)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--from", dest="source")
    args = ap.parse_args()
    sets = []
    if args.source:
        lines = []
        for path in args.source.split(","):
            with open(path) as f:
                chunk = [l.rstrip("\n") for l in f if l.strip()]
            sets.append(parse(chunk))
            lines += chunk
    else:
        lines = measure([int(t) for t in args.threads.split(",")], args.reps)
        os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
        with open(os.path.join(ROOT, "target", "auto-model.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    rows = parse(lines)
    sets = sets or [rows]
    print(f"rows: {len(rows)}")

    x = np.array([[r["ΣV/CC"] * r["pad"], r["pad"], 1.0 / min(max(r["c"], 64), 512)]
                  for r in rows])
    y = np.array([r["input"] / r["conv"] for r in rows])
    input_coef, rms = fit(x[~np.isnan(y)], y[~np.isnan(y)])
    a, b, c = input_coef
    print(f"input side: A = {a:.3f}, B = {b:.3f}, C = {c:.2f}; "
          f"r.m.s. relative error {rms:.1%}")

    x = np.array([[r["phi"], r["phi"] * 16 * operand_builds_per_tile(r),
                   r["phi"] * r["c"] / 512] for r in rows])
    # Relative to the clustered dense route, the time `Auto` compares Winograd with.
    y = np.array([r["winograd"] / r["dense"] for r in rows])
    wino_coef, rms = fit(x, y)
    d, e, f = wino_coef
    print(f"Winograd: D = {d:.3f}, E = {e:.3f}, F = {f:.3f}; "
          f"r.m.s. relative error {rms:.1%}")

    worst = sorted(rows, key=lambda r: -r["auto/best"])
    print("Auto vs the fastest strategy (auto/best), worst first:")
    for r in worst:
        flag = "  > 1.10" if r["auto/best"] > 1.10 else ""
        print(f"  {r['net']} {r['shape']:>7} K={r['K']:<3} b{r['batch']} t{r['threads']} "
              f"{r['weights']:<6}: Auto ran {r['auto_pick']:<10} best {r['best']:<8} "
              f"{r['auto/best']:.2f}{flag}")
    print_replay(rows, input_coef, wino_coef)
    # The input-side model in cost.rs (the search keeps it and fits Winograd's).
    print_search(sets, (MODEL["A"], MODEL["B"], MODEL["C"]))


if __name__ == "__main__":
    main()
