"""Generates the ONNX reference data in tests/data/onnx/ that the Rust ONNX import/export tests
compare against. Run by hand (not in CI; the outputs are committed):

    bash scripts/compare/setup.sh                       # target/compare-venv with torch
    target/compare-venv/bin/pip install onnx onnxruntime
    target/compare-venv/bin/python scripts/onnx/make_models.py

Options: --data DIR (Fashion-MNIST gzipped IDX files, default /usr/share/datasets/fashion-mnist),
--out DIR (default tests/data/onnx), --train-limit N (train on the first N images of the
shuffled epoch; default 25600, i.e. 200 batches, to keep the run to a few CPU-minutes on a shared
2-core machine; 60000 is the full epoch).

Takes about 4-5 minutes on 2 shared cores.

What it does, deterministically (fixed torch/numpy seeds, torch.set_num_threads(2), one
shuffled epoch from a seeded generator):

1. Trains two small CNNs on Fashion-MNIST for (part of) one epoch (batch 128, SGD momentum
   0.9, lr 0.05), so the weights and the BatchNorm running statistics are real, and prints the
   accuracy on the full 10k test set:
   - vgg_small: Conv+BN+ReLU x2, MaxPool, Conv+BN+ReLU, MaxPool, Conv(bias)+ReLU,
     AvgPool(k2 s2 pad1, count_include_pad=False), Flatten, Linear+ReLU, Dropout, Linear
     (the Linears export as Gemm).
   - resnet_small: stem Conv+BN+ReLU, MaxPool(k3 s2 p1), a basic block 16->16 (identity
     shortcut, second conv dilated 2), a block 16->32 stride 2 (shortcut Conv1x1 s2 + BN),
     AdaptiveAvgPool2d(1) (GlobalAveragePool), flatten, `x @ w.t() + b` (MatMul + Add).
2. Exports each in eval mode with the TorchScript exporter (opset 17, input "images",
   output "logits", dynamic batch axis "N", constant folding), checks it with
   onnx.checker.check_model and prints its node op types. That export folds every BatchNorm
   into the preceding Conv, so each model is exported a second time as <model>_bn.onnx with
   training=TrainingMode.PRESERVE (model still in eval mode: an inference graph) which keeps
   the BatchNormalization nodes; same weights, same logits up to rounding.
3. Writes images.npy (first 64 normalised test images, float32 (64,1,28,28)), labels.npy
   (int64 (64,)) and <model>_logits.npy (onnxruntime CPU logits, float32 (64,10)); prints the
   max abs difference between torch's and onnxruntime's logits.
4. Builds small invalid/unsupported models with onnx.helper for the Rust refusal tests
   (bad_*.onnx; see tests/data/onnx/README.md for what is wrong with each).
5. Writes tests/data/onnx/README.md (provenance, versions, accuracies, sizes, op types).
"""

import argparse
import gzip
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

SEED = 0
MEAN, STD = 0.2860, 0.3530
BATCH = 128
LR = 0.05
MOMENTUM = 0.9
OPSET = 17
N_REF = 64
# Images of the (shuffled) epoch actually trained on: the full 60000 take ~6-8 min per model on
# a shared 2-core machine, so by default a 25600-image subset (200 batches) of the epoch.
# --train-limit 60000 trains the full epoch.
TRAIN_LIMIT = 25600
ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:  # unsigned byte data
        raise ValueError(f"{path}: unexpected IDX magic {magic:#x}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


def load_split(data_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    x = ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)
    return x[:, None, :, :], labels.astype(np.int64)


# --------------------------------------------------------------------------------- models


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class VggSmall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(1, 16),
            *conv_bn_relu(16, 16),
            nn.MaxPool2d(2, 2),  # 28 -> 14
            *conv_bn_relu(16, 32),
            nn.MaxPool2d(2, 2),  # 14 -> 7
            nn.Conv2d(32, 32, 3, padding=1, bias=True),
            nn.ReLU(),
            nn.AvgPool2d(2, stride=2, padding=1, count_include_pad=False),  # 7 -> 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation2: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(
            cout, cout, 3, padding=dilation2, dilation=dilation2, bias=False
        )
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResnetSmall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(1, 16), nn.MaxPool2d(3, stride=2, padding=1))
        self.block1 = BasicBlock(16, 16, stride=1, dilation2=2)  # 14x14, dilated second conv
        self.block2 = BasicBlock(16, 32, stride=2)  # 14 -> 7, Conv1x1 s2 + BN shortcut
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.w = nn.Parameter(torch.empty(10, 32))
        self.b = nn.Parameter(torch.zeros(10))
        nn.init.kaiming_uniform_(self.w, a=5**0.5)  # what nn.Linear does

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        x = torch.flatten(self.pool(x), 1)
        return x @ self.w.t() + self.b


# ------------------------------------------------------------------------ train/evaluate


def train_one_epoch(model: nn.Module, x: np.ndarray, y: np.ndarray, limit: int | None) -> float:
    gen = torch.Generator().manual_seed(SEED)
    order = torch.randperm(len(x), generator=gen)
    if limit is not None:
        order = order[:limit]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()
    start = time.time()
    seen, loss_sum = 0, 0.0
    for i in range(0, len(order), BATCH):
        idx = order[i : i + BATCH]
        logits = model(xt[idx])
        loss = F.cross_entropy(logits, yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(idx)
        loss_sum += loss.item() * len(idx)
    elapsed = time.time() - start
    print(f"  trained on {seen} images in {elapsed:.1f} s, mean loss {loss_sum / seen:.4f}")
    return elapsed


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 1000):
        pred = model(torch.from_numpy(x[i : i + 1000])).argmax(1).numpy()
        correct += int((pred == y[i : i + 1000]).sum())
    return correct / len(x)


def export(model: nn.Module, path: Path, fold_bn: bool = True) -> None:
    """fold_bn=True is the plain eval-mode export, where the exporter folds every BatchNorm into
    the Conv before it; fold_bn=False passes training=TrainingMode.PRESERVE (the model is still in
    eval mode, so the export is for inference) which skips that folding and keeps
    BatchNormalization nodes."""
    model.eval()
    kwargs = dict(
        opset_version=OPSET,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )
    if not fold_bn:
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE
    dummy = torch.zeros(2, 1, 28, 28)
    try:
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, **kwargs)
    except TypeError:  # older torch without the dynamo argument
        torch.onnx.export(model, (dummy,), str(path), **kwargs)


def ort_session(path: Path) -> ort.InferenceSession:
    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: errors are raised as exceptions
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# ---------------------------------------------------------------------------- bad models


def images_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 28, 28])


def weight(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def make_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="make_models.py"
    )
    model.ir_version = 8  # what opset 17 needs; keeps older onnxruntime versions happy
    return model


def bad_models(rng: np.random.Generator) -> dict[str, tuple[onnx.ModelProto, bool, str]]:
    """name -> (model, passes onnx.checker, what is wrong)."""
    out = {}

    # A valid graph whose second node (LRN) the crate does not support.
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "conv_1.weight", "conv_1.bias"], ["conv_1_out"],
                             name="conv_1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("LRN", ["conv_1_out"], ["lrn_1_out"], name="lrn_1", size=3),
            helper.make_node("GlobalAveragePool", ["lrn_1_out"], ["pool_out"], name="pool_1"),
            helper.make_node("Flatten", ["pool_out"], ["flat"], name="flatten_1", axis=1),
            helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc",
                             transB=1),
        ],
        "bad_unsupported_op",
        [images_input()],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [weight("conv_1.weight", (4, 1, 3, 3), rng), weight("conv_1.bias", (4,), rng),
         weight("fc.weight", (10, 4), rng), weight("fc.bias", (10,), rng)],
    )
    out["bad_unsupported_op"] = (
        make_model(g), True,
        "valid graph Conv `conv_1` -> LRN `lrn_1` -> GlobalAveragePool -> Flatten -> Gemm; "
        "the LRN op (node `lrn_1`) is not supported by the crate (onnxruntime runs it).",
    )

    # Two Relu nodes each consuming the other's output: a cycle, not a DAG.
    g = helper.make_graph(
        [
            helper.make_node("Relu", ["relu_b_out"], ["relu_a_out"], name="relu_a"),
            helper.make_node("Relu", ["relu_a_out"], ["relu_b_out"], name="relu_b"),
        ],
        "bad_cycle",
        [images_input()],
        [helper.make_tensor_value_info("relu_b_out", TensorProto.FLOAT, ["N", 1, 28, 28])],
    )
    out["bad_cycle"] = (
        make_model(g), False,
        "Relu `relu_a` consumes `relu_b_out` and Relu `relu_b` consumes `relu_a_out`: a "
        "cycle (graph output `relu_b_out`; input `images` is not consumed). Fails the checker.",
    )

    # A node input that nothing produces.
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "conv_1.weight"], ["conv_1_out"],
                             name="conv_1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["conv_1_out", "ghost_bias"], ["logits"], name="add_1"),
        ],
        "bad_dangling_input",
        [images_input()],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, 28, 28])],
        [weight("conv_1.weight", (4, 1, 3, 3), rng)],
    )
    out["bad_dangling_input"] = (
        make_model(g), False,
        "Add `add_1` reads `ghost_bias`, which no node, initializer or graph input produces. "
        "Fails the checker.",
    )

    # Add of an 8-channel and a 4-channel conv output of the same input.
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "conv_a.weight"], ["conv_a_out"],
                             name="conv_a", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["images", "conv_b.weight"], ["conv_b_out"],
                             name="conv_b", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["conv_a_out", "conv_b_out"], ["logits"], name="add_1"),
        ],
        "bad_shape_mismatch",
        [images_input()],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8, 28, 28])],
        [weight("conv_a.weight", (8, 1, 3, 3), rng), weight("conv_b.weight", (4, 1, 3, 3), rng)],
    )
    out["bad_shape_mismatch"] = (
        make_model(g), True,
        "Add `add_1` of `conv_a_out` (N,8,28,28) and `conv_b_out` (N,4,28,28), both convs of "
        "`images`: channel counts 8 and 4 do not broadcast. Passes the (non-strict) checker.",
    )

    # Conv weight with 3 input channels on a 1-channel input.
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "conv_1.weight", "conv_1.bias"], ["logits"],
                             name="conv_1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        ],
        "bad_conv_weight",
        [images_input()],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8, 28, 28])],
        [weight("conv_1.weight", (8, 3, 3, 3), rng), weight("conv_1.bias", (8,), rng)],
    )
    out["bad_conv_weight"] = (
        make_model(g), True,
        "Conv `conv_1` has weight (8,3,3,3), i.e. 3 input channels, but `images` has 1 channel "
        "(group 1). Passes the (non-strict) checker.",
    )
    return out


# ------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=ROOT / "tests/data/onnx")
    parser.add_argument("--train-limit", type=int, default=TRAIN_LIMIT)
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    args.out.mkdir(parents=True, exist_ok=True)

    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "t10k")
    images, labels = x_test[:N_REF].copy(), y_test[:N_REF].copy()
    np.save(args.out / "images.npy", images)
    np.save(args.out / "labels.npy", labels)

    results = {}
    for name, cls in [("vgg_small", VggSmall), ("resnet_small", ResnetSmall)]:
        print(f"{name}:")
        torch.manual_seed(SEED)
        model = cls()
        train_time = train_one_epoch(model, x_train, y_train, args.train_limit)
        acc = accuracy(model, x_test, y_test)
        print(f"  test accuracy (10000 images): {acc:.4f}")
        model.eval()
        with torch.no_grad():
            torch_logits = model(torch.from_numpy(images)).numpy()
        for variant, fold_bn in [(name, True), (name + "_bn", False)]:
            path = args.out / f"{variant}.onnx"
            export(model, path, fold_bn=fold_bn)
            proto = onnx.load(str(path))
            onnx.checker.check_model(proto, full_check=True)
            ops = op_types(proto)
            assert ("BatchNormalization" in ops) != fold_bn, (variant, ops)
            print(f"  {path.name}: {path.stat().st_size} bytes, ops: {' '.join(ops)}")
            ort_logits = ort_session(path).run(["logits"], {"images": images})[0]
            ort_logits = ort_logits.astype(np.float32)
            assert ort_logits.shape == (N_REF, 10), ort_logits.shape
            np.save(args.out / f"{variant}_logits.npy", ort_logits)
            diff = float(np.max(np.abs(torch_logits - ort_logits)))
            ref_acc = float((ort_logits.argmax(1) == labels).mean())
            print(f"  max |torch - onnxruntime| on images.npy: {diff:.3e}")
            results[variant] = dict(
                acc=acc, ops=ops, diff=diff, train_time=train_time, ref_acc=ref_acc,
                opset=[(o.domain, o.version) for o in proto.opset_import], ir=proto.ir_version,
            )

    rng = np.random.default_rng(SEED)
    bad = {}
    for name, (model, valid, what) in bad_models(rng).items():
        if valid:
            onnx.checker.check_model(model, full_check=False)
        else:
            try:
                onnx.checker.check_model(model)
                raise AssertionError(f"{name} unexpectedly passes onnx.checker")
            except onnx.checker.ValidationError:
                pass
        path = args.out / f"{name}.onnx"
        onnx.save(model, str(path))
        try:
            sess = ort_session(path)
            sess.run(None, {"images": images[:2]})
            verdict = "onnxruntime loads and runs it"
        except Exception as e:  # noqa: BLE001
            message = str(e).replace(str(path), path.name).splitlines()[0]
            verdict = "onnxruntime refuses it: " + message[:240]
        print(f"{name}: {path.stat().st_size} bytes, ops {' '.join(op_types(model))}; {verdict}")
        bad[name] = dict(what=what, ops=op_types(model), verdict=verdict)

    write_readme(args, results, bad)
    return 0


def write_readme(args: argparse.Namespace, results: dict, bad: dict) -> None:
    out = args.out
    size = lambda name: (out / name).stat().st_size  # noqa: E731
    limit = f"the first {min(args.train_limit, 60000)} of the 60000 (shuffled)"
    lines = [
        "# ONNX reference data",
        "",
        "Generated by `scripts/onnx/make_models.py` (run by hand; not part of CI). Do not edit by",
        "hand: regenerate instead.",
        "",
        "## Provenance",
        "",
        f"- torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
        f"numpy {np.__version__}, Python {sys.version.split()[0]}",
        f"- seeds: torch.manual_seed({SEED}) before building each model, numpy seed {SEED}, "
        f"epoch order torch.randperm with Generator seed {SEED}; bad-model weights from "
        f"numpy default_rng({SEED}); torch.set_num_threads(2)",
        f"- data: Fashion-MNIST from {args.data}, normalised (x/255 - {MEAN}) / {STD}",
        f"- training: one epoch over {limit} training images, batch {BATCH}, SGD lr {LR} "
        f"momentum {MOMENTUM}, no weight decay, cross-entropy",
        "- export: eval mode, TorchScript exporter (`dynamo=False`), opset 17, input `images` "
        "(N,1,28,28) float32, output `logits` (N,10), dynamic axis `N`, "
        "`do_constant_folding=True`; checked with `onnx.checker.check_model(full_check=True)`; "
        "the `*_bn.onnx` variants add `training=TrainingMode.PRESERVE`",
        "- logits: onnxruntime CPUExecutionProvider, 1 intra-op thread",
        "",
        "## Models",
        "",
        "| model | test accuracy (10k) | accuracy on images.npy | max abs torch vs onnxruntime "
        "| size (bytes) | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| `{name}.onnx` | {r['acc']:.4f} | {r['ref_acc']:.4f} | {r['diff']:.3e} "
            f"| {size(name + '.onnx')} | {r['train_time']:.0f} |"
        )
    lines.append("")
    for name, r in results.items():
        lines.append(f"Op types of `{name}.onnx` (in graph order, IR {r['ir']}, opsets {r['opset']}):")
        lines.append("")
        lines.append("    " + " ".join(r["ops"]))
        lines.append("")
    lines += [
        "`vgg_small`: Conv(1->16)+BN+ReLU, Conv(16->16)+BN+ReLU, MaxPool 2x2, Conv(16->32)+BN+ReLU, "
        "MaxPool 2x2, Conv(32->32, bias)+ReLU, AvgPool(k2 s2 pad1, count_include_pad=False), "
        "Flatten, Linear(512->64)+ReLU, Dropout(0.2), Linear(64->10). "
        "`resnet_small`: stem Conv(1->16)+BN+ReLU, MaxPool(k3 s2 p1), basic block 16->16 (identity "
        "shortcut, second conv 3x3 dilation 2 padding 2), basic block 16->32 stride 2 (shortcut "
        "Conv1x1 s2 + BN), AdaptiveAvgPool2d(1), flatten, `x @ w.t() + b`. "
        "With constant folding in eval mode the TorchScript exporter folds each BatchNorm into the "
        "preceding Conv (weights and bias), so the plain files have no BatchNormalization node; "
        "the Dropout disappears in eval mode. The `*_bn.onnx` files are the "
        "same trained models exported with `training=TrainingMode.PRESERVE` (model in eval mode, "
        "so still an inference graph), which skips that folding and keeps the "
        "BatchNormalization nodes (with the real running statistics, epsilon 1e-5). "
        "In `resnet_small_bn.onnx` the first node is an `Identity` of an initializer: the "
        "biases of `block2.bn2` and of the shortcut BN `block2.shortcut.1` receive identical "
        "gradients (their outputs are added) and start at zero, so they are bitwise equal after "
        "training, and the exporter's initializer deduplication replaced one by "
        "`Identity(block2.bn2.bias)`. An importer should accept Identity on initializers.",
        "",
        "## Reference inputs and outputs",
        "",
        f"- `images.npy`: float32 (64,1,28,28), the first 64 test images normalised ({size('images.npy')} bytes)",
        f"- `labels.npy`: int64 (64,), their labels ({size('labels.npy')} bytes)",
    ]
    for name in results:
        lines.append(
            f"- `{name}_logits.npy`: float32 (64,10), onnxruntime logits of `{name}.onnx` on "
            f"images.npy ({size(name + '_logits.npy')} bytes)"
        )
    lines += [
        "",
        "## Bad models (refusal tests)",
        "",
        "Built with `onnx.helper`, opset 17, input `images` (N,1,28,28) float32.",
        "",
    ]
    for name, b in bad.items():
        lines.append(f"- `{name}.onnx` ({size(name + '.onnx')} bytes): {b['what']} [{b['verdict']}]")
    lines += [
        "",
        "## Regenerate",
        "",
        "    bash scripts/compare/setup.sh",
        "    target/compare-venv/bin/pip install onnx onnxruntime",
        "    target/compare-venv/bin/python scripts/onnx/make_models.py",
        "",
        "The training is deterministic on one machine and torch version; another CPU or torch "
        "version may give slightly different weights, so regenerate all files together.",
        "",
        "To run any ONNX file on images with onnxruntime alone (the lightweight `target/pyenv` "
        "from `bash scripts/setup_python.sh` suffices):",
        "",
        "    target/pyenv/bin/python scripts/onnx/run_onnxruntime.py MODEL.onnx IMAGES.npy OUT.npy",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
