"""Merges the comparison harness's JSON results into one markdown table.

Reads, for every thread count N given, `ours_tN.json` (examples/compare.rs), `torch_tN.json`
and `sklearn_tN.json` (bench_python.py) from the results directory and prints a header
(machine, threads, versions, protocol) and one table:

- conv rows (one per layer shape, batch and thread count): PyTorch's GFLOP/s, ours dense and
  ours clustered (dense-equivalent GFLOP/s, i.e. the dense FLOP count over the clustered
  time), and each of ours divided by PyTorch's (> 1: ours is faster);
- k-means rows (one per thread count): scikit-learn's and our time and inertia, the speed-up
  (sklearn time / our time, > 1: ours is faster) and the inertia ratio (ours / sklearn,
  < 1: ours found a better clustering).

Then a second table, the training step of the flagship network (one row per thread count,
from `ours_tN.json` and `torchtrain_tN.json`): PyTorch's and our median step time, their ratio
and how far apart the two sides' losses of the first steps are.

Only the standard library is used, so any python3 runs it.

    table.py --results DIR --threads 1,2 --machine "..." --rustc "..." [--note "..."]
"""

import argparse
import json
import os
import sys


def load(results, name):
    """The parsed JSON file `name` in `results`, or None when it does not exist."""
    path = os.path.join(results, name)
    if not os.path.exists(path):
        print(f"table.py: missing {path}", file=sys.stderr)
        return None
    with open(path) as f:
        return json.load(f)


def gflops(flop, ms):
    return flop / ms * 1e-6


def fmt_ratio(x):
    return f"{x:.2f}×"


def conv_rows(ours, torch, threads):
    """Table rows for the conv cases both sides measured at this thread count."""
    ref = {(r["slug"], r["batch"]): r for r in torch["conv"]}
    rows = []
    for o in ours["conv"]:
        t = ref.get((o["slug"], o["batch"]))
        if t is None:
            continue
        torch_ms, flop = t["ms"], o["flop"]
        cells = [
            f"{o['name']}, b{o['batch']}",
            str(threads),
            f"{gflops(flop, torch_ms):.1f}",
            f"{gflops(flop, o['dense_ms']):.1f}",
            fmt_ratio(torch_ms / o["dense_ms"]),
        ]
        for c in sorted(o["clustered"], key=lambda c: c["k"]):
            cells.append(f"{gflops(flop, c['ms']):.1f} ({c['auto']})")
            cells.append(fmt_ratio(torch_ms / c["ms"]))
        rows.append((o["slug"], o["batch"], threads, cells))
    return rows


def kmeans_row(ours, sklearn, threads, n_cols):
    """The table row of the k-means comparison at this thread count."""
    o, s = ours["kmeans"], sklearn["kmeans"]
    cells = [
        f"k-means {o['n']}×{o['d']}, K={o['k']}",
        str(threads),
        f"{s['median_s']:.3f} s, inertia {s['inertia']:.1f} ({s['n_iter']} it.)",
        f"{o['median_s']:.3f} s, inertia {o['inertia']:.1f} ({o['n_iter']} it.)",
        f"{fmt_ratio(s['median_s'] / o['median_s'])} (inertia ×{o['inertia'] / s['inertia']:.3f})",
    ]
    return cells + [""] * (n_cols - len(cells))


def conv_and_kmeans_table(runs, ours0, torch0, ks):
    """The conv rows and the k-means rows, with the agreement check below them."""
    header = ["case", "threads", "PyTorch GFLOP/s; sklearn", "ours dense GFLOP/s; ours k-means",
              "ours ÷ ref"]
    for k in ks:
        header += [f"clustered K={k} GFLOP/s (auto)", f"K={k} ÷ PyTorch"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
    rows = []
    for n, r in runs.items():
        if r["ours"] and r["torch"]:
            rows += conv_rows(r["ours"], r["torch"], n)
    # Group the thread counts of one case together.
    order = {s["slug"]: i for i, s in enumerate(ours0["conv"])}
    for _, _, _, cells in sorted(rows, key=lambda r: (order.get(r[0], 0), r[1], r[2])):
        print("| " + " | ".join(cells) + " |")
    for n, r in runs.items():
        if r["ours"] and r["sklearn"] and r["ours"]["kmeans"]:
            print("| " + " | ".join(kmeans_row(r["ours"], r["sklearn"], n, len(header))) + " |")
    print()
    print("Ratios > 1× mean ours is faster (conv: PyTorch time / our time; k-means: sklearn "
          "time / our time). Clustered GFLOP/s are dense-equivalent (2·N·Cout·Cin·9·H·W / "
          "time); (auto) is the strategy `ForwardStrategy::Auto` picked. k-means inertias are "
          "exact float64 sums for both sides, medians over the same number of seeds (the two "
          "libraries' k-means++ use different random generators); inertia × < 1 means ours "
          "found a lower median inertia.")

    # Agreement of the outputs (batch 1): worst case over the shapes.
    if torch0 and torch0.get("check"):
        worst = {key: max(c[key] for c in torch0["check"])
                 for key in torch0["check"][0] if key != "slug"}
        print("Agreement at batch 1 (relative L2 error, worst shape): ours dense vs PyTorch "
              f"{worst['dense']:.1e}" + "".join(
                  f"; ours clustered K={k} vs PyTorch on the reconstructed weight "
                  f"{worst[f'k{k}']:.1e}" for k in ks if f"k{k}" in worst) + ".")


def train_table(runs):
    """The training-step table: one row per thread count both sides measured."""
    rows = []
    for n, r in runs.items():
        ours = (r["ours"] or {}).get("train")
        torch = (r["torchtrain"] or {}).get("train")
        if not ours or not torch:
            continue
        diff = max(abs(a - b) / abs(b) for a, b in zip(ours["losses"], torch["losses"]))
        rows.append([
            str(n),
            f"{torch['ms']:.1f}",
            f"{ours['ms']:.1f}",
            fmt_ratio(torch["ms"] / ours["ms"]),
            ", ".join(f"{v:.4f}" for v in ours["losses"]) + " vs "
            + ", ".join(f"{v:.4f}" for v in torch["losses"]) + f" ({diff:.1e})",
        ])
    if not rows:
        return
    batch = next(r["ours"]["train"]["batch"] for r in runs.values()
                 if r["ours"] and r["ours"].get("train"))
    print()
    print(f"### Training step of the flagship network (batch {batch})\n")
    print("Forward, softmax cross-entropy, backward and one SGD step (momentum 0.9, weight "
          "decay 5e-4) of `examples/fashion_mnist.rs`'s network (five conv-BN-ReLU blocks, "
          "three 2×2 max-pools, one linear layer) in f32, from the same initial parameters "
          "on the same batch; median step time, same protocol as the conv rows.\n")
    header = ["threads", "PyTorch ms", "ours ms", "ours ÷ PyTorch",
              "losses of the first steps, ours vs PyTorch (max rel. diff)"]
    print("| " + " | ".join(header) + " |")
    print("|---|---:|---:|---:|---|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print()
    print("Ratio > 1× means ours is faster (PyTorch time / our time).")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--machine", default="unknown")
    parser.add_argument("--rustc", default="unknown")
    parser.add_argument("--note", default="", help="a free-text line added to the header")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]

    runs = {}
    for n in thread_counts:
        runs[n] = {side: load(args.results, f"{side}_t{n}.json")
                   for side in ("ours", "torch", "sklearn", "torchtrain")}
    any_run = lambda side: next((r[side] for r in runs.values() if r[side]), None)
    ours0, torch0, sklearn0 = any_run("ours"), any_run("torch"), any_run("sklearn")
    if ours0 is None:
        sys.exit("table.py: no results of ours")
    ks = sorted({c["k"] for row in ours0["conv"] for c in row["clustered"]})

    # Header: what ran where, with which versions and actual thread counts.
    versions = []
    torch_any = torch0 or any_run("torchtrain")
    if torch_any:
        versions.append(f"torch {torch_any['versions']['torch']}")
    if sklearn0:
        versions.append(f"scikit-learn {sklearn0['versions']['sklearn']}")
    numpy_v = (torch0 or sklearn0 or {}).get("versions", {}).get("numpy")
    if numpy_v:
        versions.append(f"numpy {numpy_v}")
    versions.append(args.rustc)
    actual = ", ".join(
        f"{n} (ours: {r['ours']['threads'] if r['ours'] else '–'} rayon, "
        f"torch: {(r['torch'] or r['torchtrain'] or {}).get('threads', '–')})"
        for n, r in runs.items()
    )
    p = ours0["protocol"]
    print("## clustered-conv vs PyTorch / scikit-learn\n")
    print(f"- machine: {args.machine}" + (
        f" (torch CPU capability {torch0['cpu_capability']})" if torch0 else ""))
    print(f"- threads: {actual}")
    print(f"- versions: {', '.join(versions)}")
    print(f"- conv timing: median of ≥ {p['min_runs']} calls and ≥ {p['min_secs']} s "
          f"(capped at {p['max_secs']} s) after ≥ {p['warmup_secs']} s warm-up; "
          f"k-means: {len(ours0['kmeans']['times_s']) if ours0['kmeans'] else 0} fit(s), "
          "seeds fit_seed + 0, 1, …, after one warm-up fit; median time and median inertia")
    if args.note:
        print(f"- {args.note}")
    print()

    # The table (absent from a --train-only run).
    has_conv = any(r["ours"] and r["ours"]["conv"] for r in runs.values())
    has_kmeans = any(r["ours"] and r["ours"].get("kmeans") for r in runs.values())
    if has_conv or has_kmeans:
        conv_and_kmeans_table(runs, ours0, torch0, ks)

    train_table(runs)


if __name__ == "__main__":
    main()
