"""The Python side of the comparison harness: PyTorch conv2d, scikit-learn k-means and one
PyTorch training step of the flagship network.

Reads the .npy files written once by `cargo run --release --example compare -- gen` (see
`manifest.json` in the data directory), times the reference implementations with the same
protocol as `examples/compare.rs`, and writes the results as JSON.

Three subcommands, meant to run as separate processes (so torch and scikit-learn never share
one process and its OpenMP runtimes):

    bench_python.py conv   --data DIR --out FILE --threads N [--only SLUG,..] [protocol flags]
    bench_python.py kmeans --data DIR --out FILE --threads N [--runs 3]
    bench_python.py train  --data DIR --out FILE --threads N [protocol flags]

Threads are pinned three ways: the OMP/MKL/OpenBLAS environment variables (set here before
numpy or torch are imported, and by run.sh), torch.set_num_threads(N), and threadpoolctl's
threadpool_limits(N) around all timed work.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["conv", "kmeans", "train"])
    parser.add_argument("--data", required=True, help="directory written by `compare gen`")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--only", default="", help="comma-separated shape slugs (conv)")
    # Timing protocol, identical to examples/compare.rs (run.sh passes the same values).
    parser.add_argument("--min-runs", type=int, default=20)
    parser.add_argument("--min-secs", type=float, default=1.0)
    parser.add_argument("--max-secs", type=float, default=5.0)
    parser.add_argument("--warmup-secs", type=float, default=0.2)
    parser.add_argument("--runs", type=int, default=3, help="timed k-means fits")
    return parser.parse_args()


ARGS = parse_args()

# Must happen before numpy / torch / sklearn load their thread pools.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402  (imported after the environment is pinned)
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402


def median_ms(fn, min_runs, min_secs, max_secs, warmup_secs):
    """Median wall time of `fn()` in ms, and the number of timed calls.

    Same protocol as `Protocol::median_ms` in examples/compare.rs: warm up for at least one
    call and `warmup_secs`; then time single calls until there are `min_runs` of them and
    `min_secs` have passed, or (with at least 3 calls) `max_secs` have passed.
    """
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < warmup_secs:
        fn()
    times = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
        elapsed = time.perf_counter() - start
        if (len(times) >= min_runs and elapsed >= min_secs) or (
            len(times) >= 3 and elapsed >= max_secs
        ):
            break
    # Upper median, like the Rust side's `sorted[len / 2]`.
    return sorted(times)[len(times) // 2], len(times)


def rel_err(a, b):
    """Relative L2 error ||a - b|| / ||b||, computed in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def pools():
    """The native thread pools threadpoolctl sees (to verify the pinning in the JSON)."""
    return [
        {k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "filepath")}
        for p in threadpool_info()
    ]


def bench_conv(manifest):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(ARGS.threads)
    only = [s for s in ARGS.only.split(",") if s]
    rows, checks = [], []
    with torch.inference_mode(), threadpool_limits(ARGS.threads):
        for shape in manifest["shapes"]:
            slug = shape["slug"]
            if only and slug not in only:
                continue
            folder = os.path.join(ARGS.data, slug)
            load = lambda name: torch.from_numpy(np.load(os.path.join(folder, name)))
            w = load("w.npy")

            # Agreement check at batch 1: PyTorch on the original weight vs our dense output,
            # and PyTorch on each codebook-reconstructed weight vs our clustered output.
            x1 = load("x_b1.npy")
            check = {"slug": slug, "dense": rel_err(F.conv2d(x1, w, padding=1), load("y_b1.npy"))}
            for k in manifest["ks"]:
                y_torch = F.conv2d(x1, load(f"w_k{k}.npy"), padding=1)
                check[f"k{k}"] = rel_err(y_torch, load(f"y_k{k}_b1.npy"))
            checks.append(check)

            for n in manifest["batches"]:
                x = load(f"x_b{n}.npy")
                _, c, h, wd = x.shape
                flop = 2.0 * n * c * w.shape[0] * 9 * h * wd
                ms, runs = median_ms(
                    lambda: F.conv2d(x, w, padding=1),
                    ARGS.min_runs, ARGS.min_secs, ARGS.max_secs, ARGS.warmup_secs,
                )
                print(f"torch: {shape['name']} b{n}: {ms:.3f} ms ({flop / ms * 1e-6:.1f} GFLOP/s)",
                      file=sys.stderr)
                rows.append({"name": shape["name"], "slug": slug, "batch": n, "flop": flop,
                             "ms": ms, "runs": runs})
        info = pools()
    return {
        "side": "torch",
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "pools": info,
        "conv": rows,
        "check": checks,
    }


def flagship(blocks, classes):
    """The flagship network of examples/common/flagship.rs in PyTorch: per block a 3x3 conv
    (padding 1, no bias), BatchNorm2d (PyTorch defaults: eps 1e-5, momentum 0.1), ReLU and,
    where the block says so, a 2x2 max-pool; then flatten and one linear layer."""
    import torch.nn as nn

    layers = []
    for cin, cout, pool in blocks:
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2, 2))
    hw = 28 // 2 ** sum(1 for b in blocks if b[2])
    layers += [nn.Flatten(), nn.Linear(blocks[-1][1] * hw * hw, classes)]
    return nn.Sequential(*layers)


def bench_train(manifest):
    """One training step of the flagship network (forward, cross-entropy, backward, SGD with
    momentum and weight decay) from the parameters and batch that `compare gen` wrote: the
    losses of the first steps (agreement check with ours), then the median step time."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(ARGS.threads)
    cfg = manifest["train"]
    folder = os.path.join(ARGS.data, "train")
    load = lambda name: torch.from_numpy(np.load(os.path.join(folder, name)))
    net = flagship(cfg["blocks"], cfg["classes"])
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    linear = net[-1]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(load(f"conv{i}.npy"))
        linear.weight.copy_(load("fc_w.npy"))
        linear.bias.copy_(load("fc_b.npy"))
    x, labels = load("x.npy"), load("labels.npy").long()
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), labels)
        loss.backward()
        opt.step()
        return float(loss)

    with threadpool_limits(ARGS.threads):
        losses = [step() for _ in range(cfg["check_steps"])]
        ms, runs = median_ms(step, ARGS.min_runs, ARGS.min_secs, ARGS.max_secs,
                             ARGS.warmup_secs)
        info = pools()
    print(f"torch: flagship training step, batch {x.shape[0]}: {ms:.1f} ms; losses {losses}",
          file=sys.stderr)
    return {
        "side": "torch-train",
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "pools": info,
        "train": {"batch": int(x.shape[0]), "ms": ms, "runs": runs, "losses": losses},
    }


def bench_kmeans(manifest):
    import sklearn
    from sklearn.cluster import KMeans

    km = manifest["kmeans"]
    x = np.load(os.path.join(ARGS.data, km["file"]))
    assert x.dtype == np.float32 and x.shape == (km["n"], km["d"]), (x.dtype, x.shape)

    def fit(seed):
        return KMeans(n_clusters=km["k"], init="k-means++", n_init=1, algorithm="lloyd",
                      tol=1e-4, random_state=seed).fit(x)

    def exact_inertia(model):
        # sklearn's inertia_ is accumulated in the data's dtype (float32); recompute it in
        # float64 from the labels and centres so it compares exactly with ours (f64, exact per
        # point).
        centres = model.cluster_centers_.astype(np.float64)
        diff = x.astype(np.float64) - centres[model.labels_]
        return float(np.einsum("ij,ij->", diff, diff))

    # Timed fit r uses seed fit_seed + r on both sides (different generators, the same
    # seeding method): the medians over seeds compare time and quality, not one lucky draw.
    with threadpool_limits(ARGS.threads):
        fit(km["fit_seed"])  # untimed warm-up, as on our side
        times, inertias, iters = [], [], []
        for r in range(ARGS.runs):
            t = time.perf_counter()
            model = fit(km["fit_seed"] + r)
            times.append(time.perf_counter() - t)
            inertias.append(exact_inertia(model))
            iters.append(int(model.n_iter_))
        info = pools()
    median = sorted(times)[len(times) // 2]
    inertia = sorted(inertias)[len(inertias) // 2]
    n_iter = sorted(iters)[len(iters) // 2]
    print(f"sklearn: k-means {x.shape[0]}x{x.shape[1]} K={km['k']}: {median:.3f} s, "
          f"median inertia {inertia:.1f} over {len(inertias)} seed(s), {n_iter} iterations",
          file=sys.stderr)
    return {
        "side": "sklearn",
        "threads": ARGS.threads,
        "versions": {"sklearn": sklearn.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "pools": info,
        "kmeans": {"n": x.shape[0], "d": x.shape[1], "k": km["k"], "times_s": times,
                   "median_s": median, "inertia": inertia, "inertias": inertias,
                   "n_iter": n_iter, "n_iters": iters},
    }


def main():
    with open(os.path.join(ARGS.data, "manifest.json")) as f:
        manifest = json.load(f)
    bench = {"conv": bench_conv, "kmeans": bench_kmeans, "train": bench_train}[ARGS.what]
    result = bench(manifest)
    result["protocol"] = {"min_runs": ARGS.min_runs, "min_secs": ARGS.min_secs,
                          "max_secs": ARGS.max_secs, "warmup_secs": ARGS.warmup_secs,
                          "kmeans_runs": ARGS.runs}
    with open(ARGS.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"{result['side']}: wrote {ARGS.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
