"""`edgetrain export`: a trained model to ONNX (fp32 weights, inference mode).

    edgetrain export runs/lenet-int8 --out lenet.onnx

The graph takes the normalised input, (N, 1, H, W) float32 with
x = (pixel / 255 - mean) / std, and returns the logits; mean and std are
printed and stored in the model's metadata (edgetrain.normalization). With
onnxruntime installed, the file is checked at once: onnxruntime's logits on
a batch of the run's test images (or random inputs when the data is not at
hand) against edgetrain's fp32 forward, within 1e-4.
"""
from __future__ import annotations

import os

import numpy as np

import edgetrain as et
from .common import (
    MODELS, UserError, build_model, load_weights, normalization, normalize, one_line,
    open_checkpoint, positive_int, read_split,
)

TOLERANCE = 1e-4     # max |logit difference| accepted between onnxruntime and edgetrain fp32


def _check_inputs(ck, model_name, size, n=64):
    """(n, 1, H, W) float32 inputs for the round-trip check: the run's test images,
    normalised as in training, or standard normal values when they are not at hand."""
    if ck is not None and size == (28, 28):
        cfg = ck["config"]
        try:
            images, _ = read_split(cfg["data"], cfg.get("data_dir"), train=False)
            return normalize(images[:n], tuple(ck["normalization"])), "test images"
        except UserError:
            pass
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1) + size).astype(np.float32), "random inputs"


def cmd_export(args):
    path, ck, model_name, state, num_classes = open_checkpoint(args.checkpoint, args.model)
    size = tuple(args.input_size)
    if model_name == "lenet" and size != (28, 28):
        raise UserError(f"--input-size {size[0]} {size[1]}: lenet takes 28x28 images")
    model = build_model(model_name, num_classes)
    load_weights(model, state, path, "checkpoint")
    model.eval()
    norm = tuple(ck["normalization"]) if ck is not None else None
    if norm is None and args.data is not None:
        norm = normalization(args.data, None if args.data != "idx" else
                             read_split(args.data, args.data_dir, train=True)[0])
    out = args.out
    if os.path.isdir(out):
        raise UserError(f"--out {out} is a directory; give the .onnx file's path")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UserError(f"--out {out}: the directory {parent} does not exist")
    example = np.zeros((1, 1) + size, dtype=np.float32)
    try:
        from ..onnx import export
    except ImportError as e:
        raise UserError(one_line(e)) from None
    metadata = {"edgetrain.model": model_name, "edgetrain.num_classes": str(num_classes)}
    if norm is not None:
        metadata["edgetrain.normalization"] = f"{norm[0]},{norm[1]}"
    try:
        export(model, example, out, opset_version=args.opset, metadata=metadata)
    except ImportError as e:             # the onnx package is missing
        raise UserError(one_line(e)) from None
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {out}: {model_name}, input 'input' (N, 1, {size[0]}, {size[1]}) float32"
          + (f" normalised with mean {norm[0]:.4f}, std {norm[1]:.4f}" if norm else "")
          + f", output 'logits' (N, {num_classes}); opset {args.opset}")
    if args.no_check:
        return 0
    try:
        import onnxruntime as ort
    except ImportError:
        print("note: onnxruntime is not installed; the export was not checked")
        return 0
    x, what = _check_inputs(ck, model_name, size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    sess = ort.InferenceSession(out, opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with et.no_grad(), et.precision("fp32"):
        want = np.asarray(model(et.from_numpy(x)).numpy())
    diff = float(np.max(np.abs(got - want)))
    agree = float(np.mean(got.argmax(1) == want.argmax(1)))
    print(f"onnxruntime {ort.__version__} on {len(x)} {what}: max |logit difference| "
          f"{diff:.2e} (tolerance {TOLERANCE:g}), same prediction on {100 * agree:.1f}%")
    if not diff <= TOLERANCE:
        raise UserError(f"the exported model's logits differ from edgetrain's by {diff:.3g} "
                        f"(> {TOLERANCE:g})")
    return 0


def add_parser(sub):
    x = sub.add_parser(
        "export", help="a trained model to ONNX, checked with onnxruntime",
        description="Write a checkpoint's model as ONNX (fp32 weights, inference mode: "
                    "BatchNorm with its running statistics; dynamic batch size). With "
                    "onnxruntime installed, checks the file's logits against edgetrain's "
                    f"within {TOLERANCE:g}.")
    x.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="run directory or checkpoint file (a bare state_dict needs --model)")
    x.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    x.add_argument("--model", choices=MODELS, default=None,
                   help="model of a bare state_dict; checked against a run's checkpoint")
    x.add_argument("--input-size", type=positive_int, nargs=2, default=(28, 28),
                   metavar=("H", "W"), help="image height and width (default 28 28)")
    x.add_argument("--data", choices=("fashion-mnist", "mnist", "idx"), default=None,
                   help="for a bare state_dict: the data set whose normalisation to record")
    x.add_argument("--data-dir", default=None, metavar="DIR", help="with --data idx")
    x.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    x.add_argument("--no-check", action="store_true",
                   help="do not check the file with onnxruntime")
    x.set_defaults(func=cmd_export)
    return x
