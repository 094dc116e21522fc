"""Runs an ONNX model with onnxruntime on the CPU and writes its first output as float32 .npy.

usage: run_onnxruntime.py MODEL.onnx IMAGES.npy OUT.npy

IMAGES.npy holds float32 images in NCHW layout (e.g. (64, 1, 28, 28)); other float dtypes are
converted to float32. The model must have exactly one graph input (fed with the images) and at
least one output; the first output (the logits) is written to OUT.npy as float32. onnxruntime
runs with the CPU execution provider and one intra-op thread so results are reproducible.

Needs only numpy and onnxruntime (the lightweight environment target/pyenv from
`bash scripts/setup_python.sh`; torch and onnx are not needed). The Rust tests call it to check
ONNX files the crate exports. Prints "ok: OUT shape ..." and exits 0, or prints the reason to
stderr and exits 1 (2 for a usage error).
"""

import sys


def fail(message: str, code: int = 1) -> int:
    print(f"run_onnxruntime.py: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        return fail("usage: run_onnxruntime.py MODEL.onnx IMAGES.npy OUT.npy", 2)
    model_path, images_path, out_path = argv[1], argv[2], argv[3]

    try:
        import numpy as np
    except ImportError as e:
        return fail(f"numpy is not installed ({e}); run `bash scripts/setup_python.sh`")
    try:
        import onnxruntime as ort
    except ImportError as e:
        return fail(f"onnxruntime is not installed ({e}); run `bash scripts/setup_python.sh`")

    try:
        images = np.load(images_path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - report any load failure the same way
        return fail(f"cannot read images {images_path!r}: {e}")
    if images.ndim != 4:
        return fail(f"images {images_path!r} have shape {images.shape}, expected 4-D NCHW")
    if not np.issubdtype(images.dtype, np.floating):
        return fail(f"images {images_path!r} have dtype {images.dtype}, expected float32")
    images = np.ascontiguousarray(images, dtype=np.float32)

    ort.set_default_logger_severity(4)  # failures are reported below, not as log lines
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            model_path, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several exception types
        return fail(f"onnxruntime cannot load {model_path!r}: {e}")

    inputs = session.get_inputs()
    outputs = session.get_outputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        return fail(f"{model_path!r} has {len(inputs)} graph inputs {names}, expected 1")
    if not outputs:
        return fail(f"{model_path!r} has no graph outputs")

    try:
        run_options = ort.RunOptions()
        run_options.log_severity_level = 4
        result = session.run([outputs[0].name], {inputs[0].name: images}, run_options)[0]
    except Exception as e:  # noqa: BLE001
        return fail(
            f"onnxruntime failed to run {model_path!r} on images of shape {images.shape}: {e}"
        )

    result = np.ascontiguousarray(result, dtype=np.float32)
    if not np.all(np.isfinite(result)):
        return fail(f"output {outputs[0].name!r} has non-finite values")
    try:
        with open(out_path, "wb") as f:  # a file object: np.save would append ".npy" to a path
            np.save(f, result, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        return fail(f"cannot write {out_path!r}: {e}")
    print(f"ok: {out_path} shape {tuple(result.shape)} ({outputs[0].name!r} of {model_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
