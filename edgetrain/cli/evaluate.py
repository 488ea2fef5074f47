"""`edgetrain evaluate`: accuracy, loss and confusion matrix of a checkpoint."""
from __future__ import annotations

import numpy as np

import edgetrain as et
from .common import (
    DATASETS, MODELS, PRECISIONS, UserError, build_model, check_input_size, evaluate_model,
    load_weights, normalization, normalize, open_checkpoint, positive_int, read_split,
)


def cmd_evaluate(args):
    path, ck, model_name, state, num_classes = open_checkpoint(args.checkpoint, args.model)
    config = ck["config"] if ck is not None else {}
    data = args.data or config.get("data", "fashion-mnist")
    data_dir = args.data_dir if args.data_dir is not None else (
        config.get("data_dir") if data == config.get("data") else None)
    train_split = args.split == "train"
    images, labels = read_split(data, data_dir, train=train_split)
    if ck is not None and data == config.get("data"):
        norm = tuple(ck["normalization"])
    else:
        norm = normalization(data, images if train_split else
                              (read_split(data, data_dir, True)[0] if data == "idx" else None))
    check_input_size(model_name, images)
    if args.subset:
        images, labels = images[:args.subset], labels[:args.subset]
    if labels.size and labels.max() >= num_classes:
        raise UserError(f"the data has label {labels.max()}, the model only "
                        f"{num_classes} classes")
    backend = args.backend or (config.get("backend") if config.get("backend") in et.backends()
                               else None) or et.get_backend()
    if backend not in et.backends():
        raise UserError(f"--backend {backend}: not available here (available: "
                        f"{', '.join(et.backends())})")
    et.set_backend(backend)
    model = build_model(model_name, num_classes)
    load_weights(model, state, path, "checkpoint")
    precision = args.precision or config.get("precision", "fp32")
    model.set_precision(precision)
    x = normalize(images, norm)
    loss, acc, conf = evaluate_model(model, x, labels, num_classes, args.batch_size)
    n = len(labels)
    epoch = ""
    if ck is not None:   # a mid-epoch checkpoint (train --checkpoint-every) says where it is
        part = ck.get("in_epoch")
        epoch = (f" (epoch {ck['epoch']})" if not part else f" (epoch {ck['epoch'] + 1}, step "
                 f"{part['batches']}/{part['steps_per_epoch']})")
    print(f"{model_name} {path}{epoch} on {data} {args.split} split, {n} images, precision "
          f"{precision}, backend {backend}")
    print(f"accuracy {acc:.4f} ({int(np.trace(conf))}/{n}), loss {loss:.4f}")
    print("confusion matrix (rows: true class, columns: predicted class; last column: "
          "recall)")
    w = max(5, len(str(int(conf.max()))) + 1 if conf.size else 5)
    print(" " * 6 + "".join(f"{c:>{w}}" for c in range(num_classes)) + "  recall")
    for r in range(num_classes):
        tot = int(conf[r].sum())
        rec = f"{conf[r, r] / tot:.3f}" if tot else "  -  "
        print(f"{r:>6}" + "".join(f"{int(v):>{w}}" for v in conf[r]) + f"  {rec:>6}")
    return 0


def add_parser(sub):
    e = sub.add_parser(
        "evaluate", help="accuracy and confusion matrix of a checkpoint on a data set",
        description="Accuracy, loss and confusion matrix of a checkpoint (a run directory, "
                    "its checkpoint.et, or with --model an et.save'd / torch.save'd "
                    "state_dict) on a data set. Data, precision and backend default to the "
                    "run's.")
    e.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="run directory or checkpoint file")
    e.add_argument("--model", choices=MODELS, default=None,
                   help="model of a bare state_dict; checked against a run's checkpoint")
    e.add_argument("--data", choices=DATASETS, default=None,
                   help="data set (default: the run's)")
    e.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory of the IDX files (default: the run's)")
    e.add_argument("--split", choices=("test", "train"), default="test",
                   help="which split (default test)")
    e.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="precision of the conv/linear products (default: the run's)")
    e.add_argument("--backend", default=None, help="backend (default: the run's)")
    e.add_argument("--batch-size", type=positive_int, default=500,
                   help="evaluation batch size (default 500)")
    e.add_argument("--subset", type=positive_int, default=None, metavar="N",
                   help="the first N images only (for quick runs)")
    e.set_defaults(func=cmd_evaluate)
    return e
