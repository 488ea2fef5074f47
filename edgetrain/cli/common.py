"""What the `edgetrain` subcommands share: data sets, models, weights files,
evaluation, output files written atomically, and UserError (a user's mistake:
one line on stderr, exit status 1)."""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys

import numpy as np

import edgetrain as et
from ..checkpoint import MAGIC, atomic_write

MODELS = ("lenet", "resnet18", "resnet34", "resnet50", "mobilenet_v2")
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8-mixed")
DATASETS = ("fashion-mnist", "mnist", "idx")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"   # Debian's dataset-fashion-mnist
# (mean, std) of the training images, pixel / 255
NORMALIZATION = {"fashion-mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}
CHECKPOINT = "checkpoint.et"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
CHECKPOINT_KIND = "edgetrain-train-checkpoint"

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}


class UserError(Exception):
    """A mistake in the command line, the data or the files: one line, exit 1."""




# -- small helpers ----------------------------------------------------------------
def one_line(msg):
    return " ".join(str(msg).split())


def positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def nonneg_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s}")
    return v


def positive_float(s):
    v = nonneg_float(s)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return v


def nonneg_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def os_reason(e):
    """'No space left on device' etc. from an OSError, without the errno prefix."""
    return e.strerror or str(e)


def epoch_seed(seed, epoch):
    """The batch-order seed of epoch `epoch` (0-based) of a run seeded `seed`:
    independent of what ran before, so a resumed run draws the same orders."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0])


# -- data -----------------------------------------------------------------------------
def resolve_data_dir(data, data_dir):
    if data_dir is not None:
        return data_dir
    if data == "fashion-mnist":
        return FASHION_DIR
    raise UserError(f"--data {data} needs --data-dir DIR (a directory of MNIST-format IDX "
                    "files: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                    "t10k-...)")


def read_split(data, data_dir, train):
    """uint8 images (N, H, W), int64 labels (N,) of one split; UserError when absent."""
    directory = resolve_data_dir(data, data_dir)
    try:
        images, labels = et.data.load_mnist(directory, train=train)
    except FileNotFoundError as e:
        hint = ""
        if data == "fashion-mnist" and data_dir is None:
            hint = " (install Debian's dataset-fashion-mnist, or pass --data-dir DIR)"
        raise UserError(f"{e}{hint}") from None
    except (ValueError, OSError) as e:   # malformed IDX files, unreadable files
        raise UserError(f"--data {data}: cannot read {directory!r}: {one_line(e)}") from None
    return images, labels.astype(np.int64)


def normalization(data, train_images):
    """(mean, std) the inputs are normalised with: the data set's published values,
    or for --data idx those of its training images."""
    if data in NORMALIZATION:
        return NORMALIZATION[data]
    a = train_images.astype(np.float64) / 255.0
    return float(a.mean()), float(max(a.std(), 1e-6))


def normalize(images, norm):
    """uint8 (N, H, W) -> float32 (N, 1, H, W), (x / 255 - mean) / std."""
    mean, std = norm
    x = (images.astype(np.float32) / np.float32(255.0) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x[:, None])


# -- models -------------------------------------------------------------------------
def build_model(name, num_classes):
    if name == "lenet":
        return et.models.lenet(num_classes=num_classes, in_channels=1)
    builder = getattr(et.models, name)
    # 28x28 grayscale: one input channel, small_input: the resnets' CIFAR-style stem
    # (3x3 conv, no max-pool), mobilenet_v2's stride-1 first conv (last block at 2x2)
    return builder(num_classes=num_classes, in_channels=1, small_input=True)


def check_input_size(model_name, images):
    if model_name == "lenet" and images.shape[1:] != (28, 28):
        raise UserError(f"--model lenet takes 28x28 images, the data has "
                        f"{images.shape[1]}x{images.shape[2]}; use a resnet")


def freeze(model, train_only):
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


def model_state_from(obj):
    """The model state_dict inside what an --init / evaluate file held."""
    if isinstance(obj, dict) and obj.get("kind") == CHECKPOINT_KIND:
        return obj["model"], obj.get("model_name")
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return obj[key], None
        return obj, None
    raise UserError(f"holds a {type(obj).__name__}, not a state_dict")


def read_weights(path, model_name, what):
    """(state_dict, saved model name or None) from an edgetrain checkpoint or a
    torch.save'd state_dict (loaded with torch, imported only then)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as e:
        raise UserError(f"{what} {path}: {os_reason(e)}") from None
    if head == MAGIC:
        obj = et.load(path)                       # CheckpointError: reported by main
        try:
            state, saved_name = model_state_from(obj)
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
                            f"PyTorch state_dict (torch.load: {one_line(e)[:200]})") from None
        try:
            state, saved_name = model_state_from(obj)
        except UserError as e:
            raise UserError(f"{what} {path}: {e}") from None
        state = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                 for k, v in state.items()}
    if saved_name is not None and model_name is not None and saved_name != model_name:
        raise UserError(f"{what} {path} is a checkpoint of a {saved_name} model, not "
                        f"{model_name}")
    return state, saved_name


def load_weights(model, state, path, what):
    try:
        model.load_state_dict(state)
    except (et.StateDictError, ValueError, TypeError) as e:
        msg = one_line(e)
        if len(msg) > 300:
            msg = msg[:300] + " ..."
        raise UserError(f"{what} {path} does not fit the model: {msg}") from None


def open_checkpoint(arg, model_arg):
    """What `evaluate` and `export` start from: a run directory, its checkpoint.et,
    or (with --model) a bare state_dict saved by et.save or torch.save.
    Returns (path, the run checkpoint or None, model name, state_dict, num_classes)."""
    path = os.path.join(arg, CHECKPOINT) if os.path.isdir(arg) else arg
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {arg}")
    try:
        with open(path, "rb") as f:
            is_et = f.read(len(MAGIC)) == MAGIC
    except OSError as e:
        raise UserError(f"{path}: {os_reason(e)}") from None
    ck = None
    if is_et:
        obj = et.load(path)                       # CheckpointError: reported by main
        if isinstance(obj, dict) and obj.get("kind") == CHECKPOINT_KIND:
            ck = obj
    model_name = ck["model_name"] if ck is not None else model_arg
    if ck is not None and model_arg is not None and model_arg != model_name:
        raise UserError(f"{path} is a checkpoint of a {model_name} model, not {model_arg}")
    if model_name is None:
        raise UserError(f"{path} is a bare state_dict: say which model it is with --model")
    if ck is not None:
        return path, ck, model_name, ck["model"], int(ck["num_classes"])
    state, _ = read_weights(path, model_name, "checkpoint")
    # the classifier's rows: the last weight of every model here is its final layer's
    fc = [v for k, v in state.items() if k.endswith("weight")]
    return path, None, model_name, state, (int(np.shape(fc[-1])[0]) if fc else 10)


# -- evaluation ---------------------------------------------------------------------
def evaluate_model(model, x, y, num_classes, batch_size=500):
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
def prepare_out(out):
    """Create --out and prove it writable now (a full or read-only file system,
    missing permissions, a path under a regular file) rather than after an epoch."""
    try:
        os.makedirs(out, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--out {out} exists and is not a directory") from None
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the directory: {os_reason(e)}") from None
    if not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a directory")
    try:
        atomic_write(os.path.join(out, ".write-test"), lambda f: f.write(b"edgetrain\n"))
        os.unlink(os.path.join(out, ".write-test"))
    except OSError as e:
        raise UserError(f"--out {out} is not writable: {os_reason(e)}") from None


def remove_stale_temporaries(out):
    """Temporary files a killed run left (.checkpoint.et.XXXX.tmp, ...): never
    taken for results, removed so they do not pile up."""
    for name in os.listdir(out):
        if name.endswith(".tmp") and any(name.startswith("." + base + ".") for base in
                                         (CHECKPOINT, METRICS, CURVES, ".write-test")):
            try:
                os.unlink(os.path.join(out, name))
            except OSError:
                pass


def write_out(path, what, write):
    try:
        atomic_write(path, write)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {os_reason(e)}") from None


def write_metrics(out, metrics):
    data = "".join(json.dumps(m, sort_keys=False) + "\n" for m in metrics).encode("utf-8")
    write_out(os.path.join(out, METRICS), "metrics", lambda f: f.write(data))


def write_curves(out, metrics):
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
    write_out(os.path.join(out, CURVES), "curves", lambda f: f.write(data))


def make_optimizer(config, params):
    if not params:
        raise UserError("no parameter left to train")
    if config["optimizer"] == "sgd":
        return et.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                            weight_decay=config["weight_decay"])
    return et.optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"])


def lr_at(config, step, total_steps):
    if config["lr_schedule"] == "linear":     # linear decay to 0 over the whole run
        return config["lr"] * (1.0 - step / total_steps)
    return config["lr"]


def tqdm_or_none():
    try:
        from tqdm import tqdm
        return tqdm
    except ImportError:   # tqdm is a dependency; without it, no bar rather than a failure
        return None
