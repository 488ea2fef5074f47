"""The `edgetrain` command (also `python -m edgetrain`).

    edgetrain train --model lenet --data mnist --data-dir DIR --precision int8 \\
                    --epochs 2 --out runs/lenet-int8
    edgetrain train --out runs/lenet-int8 --resume --epochs 4     # continue that run
    edgetrain evaluate runs/lenet-int8                             # accuracy + confusion matrix

`train` writes into --out DIR, each file atomically (temporary file, fsync,
rename), after every epoch:
    checkpoint.et   model + optimizer state, RNG state, epoch, metrics, options
                    (edgetrain.checkpoint format: SHA-256 checked, no pickle)
    metrics.jsonl   one JSON object per epoch: epoch, train_loss, train_accuracy,
                    test_loss, test_accuracy, images_per_second, seconds, ...
    curves.png      loss and accuracy per epoch (matplotlib, Agg)

Exact resume: every source of randomness is either in the checkpoint (the
global generator, which int8 backward passes draw their stochastic-rounding
seeds from) or derived from (seed, epoch) -- the batch order of epoch k is a
permutation drawn from SeedSequence([seed, k]), whatever ran before -- so a run
killed at any point and continued with --resume ends with the same weights,
bit for bit, as one that was never interrupted.

User errors (missing data, a checkpoint of another model, a corrupted
checkpoint, an --out that cannot be written, ...) print one line on stderr,
`edgetrain: error: ...`, and exit with status 1 (2 for command-line syntax,
from argparse); nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import errno
import io
import json
import math
import os
import sys
import time

import numpy as np

import edgetrain as et
from .checkpoint import MAGIC, atomic_write
from .errors import CheckpointError, EdgetrainError

__all__ = ["main"]

MODELS = ("lenet", "resnet18", "resnet34", "resnet50")
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8-mixed")
DATASETS = ("fashion-mnist", "mnist", "idx")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"   # Debian's dataset-fashion-mnist
# (mean, std) of the training images, pixel / 255
NORMALIZATION = {"fashion-mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}
CHECKPOINT = "checkpoint.et"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
CHECKPOINT_KIND = "edgetrain-train-checkpoint"

# Training options, their defaults (None: depends on another option) and whether
# --resume may change them. The checkpoint stores the values a run used;
# --resume takes them from there and refuses a different value given on the
# command line, except for these: more --epochs, a moved --data-dir, another
# --backend (the backends' fp32 results differ in rounding, so exactness holds
# only for the same backend).
TRAIN_DEFAULTS = {
    "model": "lenet", "data": "fashion-mnist", "data_dir": None, "precision": "fp32",
    "backend": None, "epochs": 10, "batch_size": 64, "lr": None, "optimizer": "sgd",
    "momentum": 0.9, "weight_decay": 0.0, "lr_schedule": "linear", "seed": 0,
    "init": None, "train_only": None, "train_subset": None, "test_subset": None,
}
RESUME_MAY_CHANGE = ("epochs", "data_dir", "backend")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}


class UserError(Exception):
    """A mistake in the command line, the data or the files: one line, exit 1."""


# -- small helpers ----------------------------------------------------------------
def _one_line(msg):
    return " ".join(str(msg).split())


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _nonneg_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s}")
    return v


def _positive_float(s):
    v = _nonneg_float(s)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return v


def _nonneg_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _os_reason(e):
    """'No space left on device' etc. from an OSError, without the errno prefix."""
    return e.strerror or str(e)


def _epoch_seed(seed, epoch):
    """The batch-order seed of epoch `epoch` (0-based) of a run seeded `seed`:
    independent of what ran before, so a resumed run draws the same orders."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0])


# -- data -----------------------------------------------------------------------------
def _data_dir(data, data_dir):
    if data_dir is not None:
        return data_dir
    if data == "fashion-mnist":
        return FASHION_DIR
    raise UserError(f"--data {data} needs --data-dir DIR (a directory of MNIST-format IDX "
                    "files: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                    "t10k-...)")


def _read_split(data, data_dir, train):
    """uint8 images (N, H, W), int64 labels (N,) of one split; UserError when absent."""
    directory = _data_dir(data, data_dir)
    try:
        images, labels = et.data.load_mnist(directory, train=train)
    except FileNotFoundError as e:
        hint = ""
        if data == "fashion-mnist" and data_dir is None:
            hint = " (install Debian's dataset-fashion-mnist, or pass --data-dir DIR)"
        raise UserError(f"{e}{hint}") from None
    except (ValueError, OSError) as e:   # malformed IDX files, unreadable files
        raise UserError(f"--data {data}: cannot read {directory!r}: {_one_line(e)}") from None
    return images, labels.astype(np.int64)


def _normalization(data, train_images):
    """(mean, std) the inputs are normalised with: the data set's published values,
    or for --data idx those of its training images."""
    if data in NORMALIZATION:
        return NORMALIZATION[data]
    a = train_images.astype(np.float64) / 255.0
    return float(a.mean()), float(max(a.std(), 1e-6))


def _normalize(images, norm):
    """uint8 (N, H, W) -> float32 (N, 1, H, W), (x / 255 - mean) / std."""
    mean, std = norm
    x = (images.astype(np.float32) / np.float32(255.0) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x[:, None])


# -- models -------------------------------------------------------------------------
def _build_model(name, num_classes):
    if name == "lenet":
        return et.models.lenet(num_classes=num_classes, in_channels=1)
    builder = getattr(et.models, name)
    # 28x28 grayscale: one input channel, the CIFAR-style stem (3x3 conv, no max-pool)
    return builder(num_classes=num_classes, in_channels=1, small_input=True)


def _check_input_size(model_name, images):
    if model_name == "lenet" and images.shape[1:] != (28, 28):
        raise UserError(f"--model lenet takes 28x28 images, the data has "
                        f"{images.shape[1]}x{images.shape[2]}; use a resnet")


def _freeze(model, train_only):
    """Parameters whose names start with none of the comma-separated prefixes get
    requires_grad=False: their weight gradients are never computed (conv/linear
    backward passes skip dW when ctx.needs_input_grad says so). Returns the
    trainable parameters."""
    named = list(model.named_parameters())
    if not train_only:
        return [p for _, p in named]
    prefixes = [s.strip() for s in train_only.split(",") if s.strip()]
    if not prefixes:
        raise UserError(f"--train-only {train_only!r}: no parameter-name prefix given")
    for pre in prefixes:
        if not any(n.startswith(pre) for n, _ in named):
            tops = sorted({n.split(".")[0] for n, _ in named})
            raise UserError(f"--train-only: no parameter name starts with {pre!r} "
                            f"(top-level names: {', '.join(tops)})")
    trainable = []
    for n, p in named:
        keep = any(n.startswith(pre) for pre in prefixes)
        p.requires_grad_(keep)
        if keep:
            trainable.append(p)
    return trainable


def _model_state_from(obj):
    """The model state_dict inside what an --init / evaluate file held."""
    if isinstance(obj, dict) and obj.get("kind") == CHECKPOINT_KIND:
        return obj["model"], obj.get("model_name")
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return obj[key], None
        return obj, None
    raise UserError(f"holds a {type(obj).__name__}, not a state_dict")


def _read_weights(path, model_name, what):
    """(state_dict, saved model name or None) from an edgetrain checkpoint or a
    torch.save'd state_dict (loaded with torch, imported only then)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as e:
        raise UserError(f"{what} {path}: {_os_reason(e)}") from None
    if head == MAGIC:
        obj = et.load(path)                       # CheckpointError: reported by main
        try:
            state, saved_name = _model_state_from(obj)
        except UserError as e:
            raise UserError(f"{what} {path}: {e}") from None
    else:
        try:
            import torch
        except ImportError:
            raise UserError(f"{what} {path} is not an edgetrain checkpoint, and reading "
                            "PyTorch files needs torch, which is not installed") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means: not a usable file
            raise UserError(f"{what} {path} is neither an edgetrain checkpoint nor a "
                            f"PyTorch state_dict (torch.load: {_one_line(e)[:200]})") from None
        try:
            state, saved_name = _model_state_from(obj)
        except UserError as e:
            raise UserError(f"{what} {path}: {e}") from None
        state = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                 for k, v in state.items()}
    if saved_name is not None and model_name is not None and saved_name != model_name:
        raise UserError(f"{what} {path} is a checkpoint of a {saved_name} model, not "
                        f"{model_name}")
    return state, saved_name


def _load_weights(model, state, path, what):
    try:
        model.load_state_dict(state)
    except (et.StateDictError, ValueError, TypeError) as e:
        msg = _one_line(e)
        if len(msg) > 300:
            msg = msg[:300] + " ..."
        raise UserError(f"{what} {path} does not fit the model: {msg}") from None


# -- evaluation ---------------------------------------------------------------------
def _evaluate(model, x, y, num_classes, batch_size=500):
    """(mean cross-entropy loss, accuracy, confusion matrix (true, predicted))."""
    model.eval()
    crit = et.nn.CrossEntropyLoss(reduction="sum")
    total_loss = 0.0
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    with et.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(et.from_numpy(x[i:i + batch_size]))
            yb = y[i:i + batch_size]
            total_loss += float(crit(logits, et.tensor(yb)).item())
            pred = np.asarray(logits.numpy()).argmax(1)
            np.add.at(conf, (yb, pred), 1)
    n = max(len(x), 1)
    return total_loss / n, float(np.trace(conf)) / n, conf


# -- output files -------------------------------------------------------------------
def _prepare_out(out):
    """Create --out and prove it writable now (a full or read-only file system,
    missing permissions, a path under a regular file) rather than after an epoch."""
    try:
        os.makedirs(out, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--out {out} exists and is not a directory") from None
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the directory: {_os_reason(e)}") from None
    if not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a directory")
    try:
        atomic_write(os.path.join(out, ".write-test"), lambda f: f.write(b"edgetrain\n"))
        os.unlink(os.path.join(out, ".write-test"))
    except OSError as e:
        raise UserError(f"--out {out} is not writable: {_os_reason(e)}") from None


def _remove_stale_temporaries(out):
    """Temporary files a killed run left (.checkpoint.et.XXXX.tmp, ...): never
    taken for results, removed so they do not pile up."""
    for name in os.listdir(out):
        if name.endswith(".tmp") and any(name.startswith("." + base + ".") for base in
                                         (CHECKPOINT, METRICS, CURVES, ".write-test")):
            try:
                os.unlink(os.path.join(out, name))
            except OSError:
                pass


def _write_out(path, what, write):
    try:
        atomic_write(path, write)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {_os_reason(e)}") from None


def _write_metrics(out, metrics):
    data = "".join(json.dumps(m, sort_keys=False) + "\n" for m in metrics).encode("utf-8")
    _write_out(os.path.join(out, METRICS), "metrics", lambda f: f.write(data))


def _write_curves(out, metrics):
    """curves.png: loss and accuracy per epoch. Uses matplotlib's object API with the
    Agg canvas (no pyplot, no global backend switch); skipped with a note when
    matplotlib is not installed (it is not a dependency of edgetrain)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print(f"note: matplotlib is not installed; {CURVES} not written", file=sys.stderr)
        return
    ep = [m["epoch"] for m in metrics]
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ep, [m["train_loss"] for m in metrics], "o-", label="train")
    ax1.plot(ep, [m["test_loss"] for m in metrics], "s-", label="test")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax2.plot(ep, [m["train_accuracy"] for m in metrics], "o-", label="train")
    ax2.plot(ep, [m["test_accuracy"] for m in metrics], "s-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    last = metrics[-1]
    fig.suptitle(f"{last['model']} {last['precision']} on {last['data']}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = buf.getvalue()
    _write_out(os.path.join(out, CURVES), "curves", lambda f: f.write(data))


# -- train --------------------------------------------------------------------------
def _resolve_train_config(args):
    """The run's options: the command line's, or on --resume the checkpoint's
    (a conflicting value on the command line is an error). Returns (config, checkpoint)."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS}
    ck_path = os.path.join(args.out, CHECKPOINT)
    ck = None
    if args.resume:
        if not os.path.exists(ck_path):
            raise UserError(f"--resume: no {CHECKPOINT} in {args.out} to continue from")
        ck = et.load(ck_path)                      # CheckpointError -> one line
        if not (isinstance(ck, dict) and ck.get("kind") == CHECKPOINT_KIND):
            raise UserError(f"--resume: {ck_path} is not a training checkpoint of "
                            "`edgetrain train`")
        config = dict(ck["config"])
        for k, v in given.items():
            if v is None or k in RESUME_MAY_CHANGE:
                continue
            if v != config.get(k):
                raise UserError(f"--resume: --{k.replace('_', '-')} {v} differs from the "
                                f"run in {args.out} ({config.get(k)}); drop it, or start a "
                                "new run with another --out")
        for k in RESUME_MAY_CHANGE:
            if given[k] is not None:
                config[k] = given[k]
        if config["epochs"] != ck["config"]["epochs"] and config["lr_schedule"] == "linear":
            print(f"note: --epochs {config['epochs']} (the run was for "
                  f"{ck['config']['epochs']}): the linear lr schedule now decays over "
                  f"{config['epochs']} epochs")
    else:
        if os.path.exists(ck_path):
            raise UserError(f"{args.out} already holds a training run ({ck_path}); pass "
                            "--resume to continue it, or choose another --out")
        config = {k: (TRAIN_DEFAULTS[k] if v is None else v) for k, v in given.items()}
    if config["lr"] is None:
        config["lr"] = DEFAULT_LR[config["optimizer"]]
    if config["backend"] is None:
        config["backend"] = et.get_backend()
    if config["backend"] not in et.backends():
        raise UserError(f"--backend {config['backend']}: not available here (available: "
                        f"{', '.join(et.backends())})")
    return config, ck


def _make_optimizer(config, params):
    if not params:
        raise UserError("no parameter left to train")
    if config["optimizer"] == "sgd":
        return et.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                            weight_decay=config["weight_decay"])
    return et.optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"])


def _lr_at(config, step, total_steps):
    if config["lr_schedule"] == "linear":     # linear decay to 0 over the whole run
        return config["lr"] * (1.0 - step / total_steps)
    return config["lr"]


def _tqdm():
    try:
        from tqdm import tqdm
        return tqdm
    except ImportError:   # tqdm is a dependency; without it, no bar rather than a failure
        return None


def cmd_train(args):
    config, ck = _resolve_train_config(args)
    out = args.out

    # data first: a typo in --data-dir must not leave an empty run directory behind
    x_img, y = _read_split(config["data"], config["data_dir"], train=True)
    xt_img, yt = _read_split(config["data"], config["data_dir"], train=False)
    norm = tuple(ck["normalization"]) if ck is not None else _normalization(config["data"], x_img)
    _check_input_size(config["model"], x_img)
    num_classes = int(max(10, y.max() + 1, yt.max() + 1))
    if ck is not None and ck["num_classes"] != num_classes:
        raise UserError(f"--resume: the data has {num_classes} classes, the run in {out} "
                        f"{ck['num_classes']}")
    if config["train_subset"]:
        x_img, y = x_img[:config["train_subset"]], y[:config["train_subset"]]
    if config["test_subset"]:
        xt_img, yt = xt_img[:config["test_subset"]], yt[:config["test_subset"]]
    x, xt = _normalize(x_img, norm), _normalize(xt_img, norm)

    init_state = None
    if ck is None and config["init"]:   # read (and check the model name) before building
        init_state, _ = _read_weights(config["init"], config["model"], "--init")
    et.set_backend(config["backend"])
    et.manual_seed(config["seed"])
    model = _build_model(config["model"], num_classes)
    if init_state is not None:
        _load_weights(model, init_state, config["init"], "--init")
    if ck is not None:
        if ck["model_name"] != config["model"]:
            raise UserError(f"--resume: {out} holds a {ck['model_name']} run")
        _load_weights(model, ck["model"], os.path.join(out, CHECKPOINT), "--resume")
    model.set_precision(config["precision"])
    params = _freeze(model, config["train_only"])
    opt = _make_optimizer(config, params)
    metrics = []
    start_epoch = 0
    if ck is not None:
        try:
            opt.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"--resume: the optimizer state in {out} does not fit: "
                            f"{_one_line(e)}") from None
        et.random.set_rng_state(ck["rng"])
        metrics = list(ck["metrics"])
        start_epoch = int(ck["epoch"])

    _prepare_out(out)
    _remove_stale_temporaries(out)
    epochs = config["epochs"]
    if start_epoch >= epochs:
        print(f"{out}: {start_epoch} epoch(s) already done (--epochs {epochs}); nothing to do")
        return 0
    if ck is not None:
        _write_metrics(out, metrics)   # drop lines of an epoch the checkpoint does not hold
        print(f"resuming {out} after epoch {start_epoch}")

    n_train, bs = len(x), config["batch_size"]
    steps_per_epoch = (n_train + bs - 1) // bs
    total_steps = steps_per_epoch * epochs
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    print(f"{config['model']} ({sum(p.numel() for p in params)} trainable parameters"
          f"{f', {frozen} tensors frozen' if frozen else ''}), {config['data']}: "
          f"{n_train} train / {len(xt)} test images, precision {config['precision']}, "
          f"backend {config['backend']}, {config['optimizer']} lr {config['lr']} "
          f"({config['lr_schedule']}), batch {bs}, epochs {start_epoch + 1}..{epochs}",
          flush=True)
    tqdm = None if args.no_progress else _tqdm()
    crit = et.nn.CrossEntropyLoss()
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        model.train()
        loader = et.data.DataLoader((x, y), batch_size=bs, shuffle=True,
                                    seed=_epoch_seed(config["seed"], epoch))
        bar = None
        it = loader
        if tqdm is not None:
            bar = tqdm(loader, total=len(loader), desc=f"epoch {epoch + 1}/{epochs}",
                       unit="batch", leave=False, dynamic_ncols=True)
            it = bar
        loss_sum, correct, seen = 0.0, 0, 0
        step = epoch * steps_per_epoch
        for bx, by in it:
            lr = _lr_at(config, step, total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad()
            logits = model(bx)
            loss = crit(logits, by)
            loss.backward()
            opt.step()
            step += 1
            nb = len(by)
            lv = float(loss.item())
            if not math.isfinite(lv):
                if bar is not None:
                    bar.close()
                raise UserError(f"epoch {epoch + 1}: the loss is {lv} (diverged); try a "
                                f"lower --lr than {config['lr']}")
            loss_sum += lv * nb
            pred = np.asarray(logits.detach().numpy()).argmax(1)
            correct += int((pred == np.asarray(by.numpy())).sum())
            seen += nb
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
        if bar is not None:
            bar.close()
        train_s = time.perf_counter() - t0
        test_loss, test_acc, _ = _evaluate(model, xt, yt, num_classes)
        seconds = time.perf_counter() - t0
        metrics.append({
            "epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "test_loss": test_loss, "test_accuracy": test_acc,
            "images_per_second": seen / train_s, "seconds": seconds, "train_seconds": train_s,
            "lr": lr, "model": config["model"], "precision": config["precision"],
            "backend": config["backend"], "data": config["data"],
        })
        state = {
            "kind": CHECKPOINT_KIND, "edgetrain_version": et.__version__,
            "model_name": config["model"], "num_classes": num_classes,
            "normalization": list(norm), "config": config, "epoch": epoch + 1,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": et.random.get_rng_state(), "metrics": metrics,
        }
        # checkpoint first: metrics.jsonl and curves.png are rebuilt from it on --resume
        _write_out(os.path.join(out, CHECKPOINT), "checkpoint",
                   lambda f: et.save(state, f))
        _write_metrics(out, metrics)
        _write_curves(out, metrics)
        m = metrics[-1]
        print(f"epoch {epoch + 1}/{epochs}: train loss {m['train_loss']:.4f} acc "
              f"{m['train_accuracy']:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | "
              f"{m['images_per_second']:.0f} images/s, {seconds:.1f} s", flush=True)
    print(f"wrote {os.path.join(out, CHECKPOINT)}, {METRICS}, {CURVES}")
    return 0


# -- evaluate -----------------------------------------------------------------------
def cmd_evaluate(args):
    path = args.checkpoint
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {args.checkpoint}")
    ck = None
    try:
        with open(path, "rb") as f:
            is_et = f.read(len(MAGIC)) == MAGIC
    except OSError as e:
        raise UserError(f"{path}: {_os_reason(e)}") from None
    if is_et:
        obj = et.load(path)
        if isinstance(obj, dict) and obj.get("kind") == CHECKPOINT_KIND:
            ck = obj
    model_name = ck["model_name"] if ck is not None else args.model
    if ck is not None and args.model is not None and args.model != model_name:
        raise UserError(f"{path} is a checkpoint of a {model_name} model, not {args.model}")
    if model_name is None:
        raise UserError(f"{path} is a bare state_dict: say which model it is with --model")
    config = ck["config"] if ck is not None else {}
    data = args.data or config.get("data", "fashion-mnist")
    data_dir = args.data_dir if args.data_dir is not None else (
        config.get("data_dir") if data == config.get("data") else None)
    train_split = args.split == "train"
    images, labels = _read_split(data, data_dir, train=train_split)
    if ck is not None and data == config.get("data"):
        norm = tuple(ck["normalization"])
    else:
        norm = _normalization(data, images if train_split else
                              (_read_split(data, data_dir, True)[0] if data == "idx" else None))
    _check_input_size(model_name, images)
    if args.subset:
        images, labels = images[:args.subset], labels[:args.subset]
    if ck is not None:
        num_classes = int(ck["num_classes"])
        state = ck["model"]
    else:
        state, _ = _read_weights(path, model_name, "checkpoint")
        fc = [v for k, v in state.items() if k.endswith("weight")]
        num_classes = int(np.shape(fc[-1])[0]) if fc else 10
    if labels.size and labels.max() >= num_classes:
        raise UserError(f"the data has label {labels.max()}, the model only "
                        f"{num_classes} classes")
    backend = args.backend or (config.get("backend") if config.get("backend") in et.backends()
                               else None) or et.get_backend()
    if backend not in et.backends():
        raise UserError(f"--backend {backend}: not available here (available: "
                        f"{', '.join(et.backends())})")
    et.set_backend(backend)
    model = _build_model(model_name, num_classes)
    _load_weights(model, state, path, "checkpoint")
    precision = args.precision or config.get("precision", "fp32")
    model.set_precision(precision)
    x = _normalize(images, norm)
    loss, acc, conf = _evaluate(model, x, labels, num_classes, args.batch_size)
    n = len(labels)
    epoch = f" (epoch {ck['epoch']})" if ck is not None else ""
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


# -- argument parsing ---------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        prog="edgetrain",
        description="Train and evaluate image classifiers with edgetrain "
                    "(heavy products offloaded to an inference backend).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser(
        "train", help="train a model, writing a checkpoint, metrics.jsonl and curves.png",
        description="Train a model on an MNIST-format data set. After every epoch writes "
                    "OUT/checkpoint.et, OUT/metrics.jsonl (one JSON object per epoch) and "
                    "OUT/curves.png, each atomically. --resume continues a run exactly "
                    "(same final weights as an uninterrupted run).")
    d = TRAIN_DEFAULTS
    # defaults are None here so --resume can tell what was given; the help shows the real ones
    t.add_argument("--model", choices=MODELS, default=None,
                   help=f"network (default {d['model']}); resnets use a 3x3 stem for 28x28 input")
    t.add_argument("--data", choices=DATASETS, default=None,
                   help=f"data set (default {d['data']}, read from {FASHION_DIR}); idx: any "
                        "directory of MNIST-format IDX files given with --data-dir")
    t.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory of the IDX files (train-images-idx3-ubyte[.gz], ...); "
                        "needed for mnist and idx")
    t.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="precision of the conv/linear products (default fp32)")
    t.add_argument("--backend", default=None,
                   help=f"backend of the heavy products: {', '.join(et.backends())} "
                        f"(default {et.get_backend()})")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"total number of epochs (default {d['epochs']}); with --resume, "
                        "may be raised to train longer")
    t.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"mini-batch size (default {d['batch_size']})")
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default 0.05 for sgd, 0.001 for adam)")
    t.add_argument("--lr-schedule", choices=("constant", "linear"), default=None,
                   help="linear: decay to 0 over all --epochs (the default; steadier final "
                        "accuracy), or constant")
    t.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="optimizer (default sgd)")
    t.add_argument("--momentum", type=_nonneg_float, default=None,
                   help=f"SGD momentum (default {d['momentum']})")
    t.add_argument("--weight-decay", type=_nonneg_float, default=None,
                   help="L2 weight decay (default 0)")
    t.add_argument("--seed", type=_nonneg_int, default=None,
                   help="seed of the initial weights, batch order and stochastic rounding "
                        "(default 0)")
    t.add_argument("--init", default=None, metavar="FILE",
                   help="initial weights: an edgetrain checkpoint (et.save / a run's "
                        "checkpoint.et) or a PyTorch state_dict saved with torch.save "
                        "(needs torch)")
    t.add_argument("--train-only", default=None, metavar="PREFIXES",
                   help="comma-separated parameter-name prefixes, e.g. fc or layer4,fc: only "
                        "matching parameters are trained, the others frozen (no weight "
                        "gradients computed; BatchNorm running statistics still update)")
    t.add_argument("--out", required=True, metavar="DIR",
                   help="run directory (created if needed)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch, with its "
                        "options")
    t.add_argument("--train-subset", type=_positive_int, default=None, metavar="N",
                   help="train on the first N training images only (for quick runs)")
    t.add_argument("--test-subset", type=_positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images only (for quick runs)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (per-epoch lines only)")
    t.set_defaults(func=cmd_train)

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
    e.add_argument("--batch-size", type=_positive_int, default=500,
                   help="evaluation batch size (default 500)")
    e.add_argument("--subset", type=_positive_int, default=None, metavar="N",
                   help="the first N images only (for quick runs)")
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv=None):
    """Entry point of the `edgetrain` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        msg = str(e)
    except CheckpointError as e:
        msg = str(e)
    except BrokenPipeError:
        # stdout closed early (`edgetrain evaluate ... | head`): not an error of ours;
        # point stdout at devnull so the interpreter's final flush stays quiet
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        msg = f"{_os_reason(e)}:{where}" if where else _os_reason(e)
        if e.errno == errno.ENOSPC:
            msg += " (the file system is full)"
    except EdgetrainError as e:    # e.g. a state_dict or shape mismatch met late
        msg = str(e)
    except KeyboardInterrupt:
        print("\nedgetrain: interrupted (the last completed epoch's checkpoint is kept; "
              "continue with --resume)", file=sys.stderr)
        return 130
    print(f"edgetrain: error: {_one_line(msg)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
