"""Writes the parity notebooks of this folder from the cell sources below.

    .venv/bin/python notebooks/make_notebooks.py

The notebooks are committed without outputs (execution_count null, no outputs)
and with fixed cell ids, so this script's output is deterministic and
tests/test_notebooks.py can check that the committed files match it: edit the
cells here, not in the .ipynb files, and re-run the script.

Each notebook ends with a dict RESULTS of its key computed values (plain
floats / ints / strings); tests/test_notebooks.py executes the notebook
headless (nbclient) and checks them against the tolerances stated in the
notebook's first cell.
"""
from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------
# Shared by the three notebooks.
SETUP = r'''
# Setup. The repository is the directory holding pyproject.toml, found by walking
# up from the working directory (notebooks/ when Jupyter or `make test` runs this);
# edgetrain is imported from it. torch is the reference, pinned to 2 threads: the
# tolerances below were measured at 2 threads (torch's reductions and max-pool
# tie-breaking depend on the thread count).
import json, os, sys, time, warnings
from pathlib import Path

import numpy as np


def find_repo(start):
    for d in (start, *start.parents):
        if (d / "pyproject.toml").is_file() and (d / "edgetrain").is_dir():
            return d
    raise FileNotFoundError(f"no edgetrain checkout (pyproject.toml and edgetrain/) at or above {start}")


REPO = find_repo(Path.cwd().resolve())
if sys.path[0] != str(REPO):
    sys.path.insert(0, str(REPO))

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

import edgetrain as et

%matplotlib inline
torch.set_num_threads(2)
T_START = time.perf_counter()
print(f"edgetrain from {Path(et.__file__).parent}, backends {et.backends()} (default {et.get_backend()}); "
      f"torch {torch.__version__} on {torch.get_num_threads()} threads")


def md_table(header, rows):
    """Shows a markdown table (rows: lists of already formatted cells)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    display(Markdown("\n".join(lines)))


def rel_err(a, ref):
    """max |a - ref| / max |ref|: the parity tests' measure (tests/test_layers_parity.py)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert a.shape == ref.shape, f"shape {a.shape} != reference {ref.shape}"
    return float(np.abs(a - ref).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-12))


def cosine(a, b):
    """Cosine similarity of two arrays, flattened, in float64."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))
'''

MNIST_DIR = r'''
# The 10k MNIST subset: <repo>/../shared/data/mnist10k (the repo is cloned with
# shared/ beside it), or wherever $EDGETRAIN_MNIST10K points.
MNIST10K = Path(os.environ.get("EDGETRAIN_MNIST10K", REPO.parent / "shared" / "data" / "mnist10k"))
if not (MNIST10K / "train-images-idx3-ubyte.gz").is_file():
    raise FileNotFoundError(f"MNIST 10k subset not found at {MNIST10K} "
                            "(expected <repo>/../shared/data/mnist10k or $EDGETRAIN_MNIST10K)")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
'''

RESULTS_NOTE = ("`RESULTS` collects the values computed above (plain numbers and strings); "
                "`tests/test_notebooks.py` runs this notebook headless and checks them "
                "against the tolerances stated at the top.")


# ---------------------------------------------------------------------------
PER_LAYER = [
    ("md", r'''
# Per-layer parity: edgetrain vs PyTorch

Each layer runs in both frameworks with **the same weights** (the torch layer's
`state_dict()` loaded into the edgetrain layer), **the same input** and **the same
upstream gradient** `dy`; we compare the output `y`, the input gradient `dx` and
every parameter gradient (`dweight`, `dbias`).

**fp32** (every layer; Conv2d / Linear on every backend edgetrain built): relative
error `max |edgetrain - torch| / max |torch|` per tensor. Tolerance **1e-4**, as in
`tests/test_layers_parity.py` (float32 round-off from a different summation order
is around 1e-6; a wrong index or a missing term is O(1)).

**Low precision** (`et.precision(...)` changes only the conv2d / linear products;
BatchNorm, pooling and ReLU stay fp32): cosine similarity of `y`, `dx`, `dW` with
torch **fp32**. Floors, as in `tests/test_lowp_ops.py` and `tests/test_precision.py`
(issue 3, section 6): **>= 0.9999** for bf16 and fp16 (8- and 11-bit mantissas,
fp32 accumulation), **>= 0.995** for int8 and int8-mixed (int8 forward and
backward-data, bf16 backward-weight): 7-bit activations and gradients, per-channel
weights, stochastic rounding of gradients.
'''),
    ("code", SETUP),
    ("code", r'''
def run_pair(t_layer, e_layer, x, policy="fp32", backend=None, train=True, seed=0):
    """Forward + backward of the same layer in torch and edgetrain.

    x: float32 array (N, C, H, W) or (..., in_features). The upstream gradient dy
    is a seeded standard normal of the output's shape. Returns
    {"y": (et, torch), "dx": (et, torch), "d<param>": (et, torch), ...}."""
    e_layer.load_state_dict(t_layer.state_dict())    # torch's weights, buffers
    t_layer.train(train)
    e_layer.train(train)
    xt = torch.tensor(x, requires_grad=True)
    yt = t_layer(xt)
    dy = np.random.default_rng(seed + 1).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    xe = et.tensor(x, requires_grad=True)
    et.manual_seed(seed)          # int8 gradients are rounded stochastically: reproducible
    with et.backend(backend or et.get_backend()), et.precision(policy):
        ye = e_layer(xe)
        ye.backward(et.tensor(dy))
    out = {"y": (ye.detach().numpy(), yt.detach().numpy()), "dx": (xe.grad.numpy(), xt.grad.numpy())}
    tparams = dict(t_layer.named_parameters())
    for name, p in e_layer.named_parameters():
        out["d" + name] = (p.grad.numpy(), tparams[name].grad.numpy())
    return out


def randomize_bn(t_layer, rng):
    """Non-trivial BatchNorm affine parameters and running statistics (torch side;
    they reach edgetrain through the state_dict)."""
    with torch.no_grad():
        for m in t_layer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
                m.bias.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
                m.running_mean.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c).astype(np.float32)))


def make_pair(factory, seed):
    """factory(nn) builds the layer from torch.nn or et.nn (same signatures)."""
    torch.manual_seed(seed)
    t_layer = factory(torch.nn)
    randomize_bn(t_layer, np.random.default_rng(seed))
    return t_layer, factory(et.nn)


def make_input(shape, seed, distinct=False):
    rng = np.random.default_rng(100 + seed)
    if distinct:     # max-pool: distinct values, so the argmax (and the gradient) is unique
        return (rng.permutation(int(np.prod(shape))).reshape(shape) / 10.0).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def block(nn):
    """A small conv -> BN -> ReLU -> max-pool -> linear stack (two products)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


# Layers whose heavy products (conv2d / linear) run on a backend and follow the
# precision policy: (label, factory, input shape).
PRODUCT_LAYERS = [
    ("Conv2d 3x3 pad 1", lambda nn: nn.Conv2d(3, 8, 3, padding=1), (2, 3, 10, 10)),
    ("Conv2d 3x3 stride 2 groups 2 no bias",
     lambda nn: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False), (2, 4, 9, 9)),
    ("Conv2d depthwise 3x3", lambda nn: nn.Conv2d(6, 6, 3, padding=1, groups=6), (2, 6, 9, 8)),
    ("Conv2d 7x7 stride 2 pad 3", lambda nn: nn.Conv2d(3, 8, 7, stride=2, padding=3), (1, 3, 16, 16)),
    ("Conv2d (3,2) dilation 2", lambda nn: nn.Conv2d(5, 4, (3, 2), padding=(2, 0), dilation=2),
     (1, 5, 12, 11)),
    ("Conv2d 1x1 stride 2 no bias", lambda nn: nn.Conv2d(16, 32, 1, stride=2, bias=False), (2, 16, 8, 8)),
    ("Linear 64->32", lambda nn: nn.Linear(64, 32), (16, 64)),
    ("Linear 400->120", lambda nn: nn.Linear(400, 120), (32, 400)),
    ("Linear on (3,4,10)", lambda nn: nn.Linear(10, 6), (3, 4, 10)),
]
# A stack of layers: its low-precision errors are not a per-layer measure (below).
STACK = ("stack conv-BN-ReLU-pool-linear", block, (4, 3, 12, 12))
# Layers without backend products (fp32 whatever the policy):
# (label, factory, input shape, train mode, distinct input values).
OTHER_LAYERS = [
    ("BatchNorm2d (train)", lambda nn: nn.BatchNorm2d(6), (4, 6, 5, 5), True, False),
    ("BatchNorm2d (eval)", lambda nn: nn.BatchNorm2d(6), (4, 6, 5, 5), False, False),
    ("ReLU", lambda nn: nn.ReLU(), (3, 4, 5, 6), True, False),
    ("MaxPool2d(2)", lambda nn: nn.MaxPool2d(2), (2, 3, 8, 8), True, True),
    ("MaxPool2d(3, 2, 1)", lambda nn: nn.MaxPool2d(3, 2, 1), (2, 3, 7, 9), True, True),
    ("AvgPool2d(3, 2, 1)", lambda nn: nn.AvgPool2d(3, 2, 1), (2, 3, 7, 9), True, False),
    ("AdaptiveAvgPool2d(1)", lambda nn: nn.AdaptiveAvgPool2d(1), (2, 3, 7, 7), True, False),
]
BACKENDS = et.backends()
PRECISIONS = ["bf16", "fp16", "int8", "int8-mixed"]
FP32_RTOL = 1e-4
COS_MIN = {"bf16": 0.9999, "fp16": 0.9999, "int8": 0.995, "int8-mixed": 0.995}
print(f"{len(PRODUCT_LAYERS)} conv/linear layers and a stack x {len(BACKENDS)} backends, "
      f"{len(OTHER_LAYERS)} other layers")
'''),
    ("md", r'''
## fp32: relative error per tensor

One row per layer and backend (layers without backend products run once). The
`dW` column is the worst parameter gradient of the layer (weights, biases, BN
affine parameters); `max abs` is the largest absolute difference over all its
tensors.
'''),
    ("code", r'''
fp32_rows = []     # (label, backend, {tensor: rel err}, max abs err)
cases = [(lab, f, shape, True, False, b) for lab, f, shape in PRODUCT_LAYERS + [STACK] for b in BACKENDS]
cases += [(lab, f, shape, train, distinct, "-") for lab, f, shape, train, distinct in OTHER_LAYERS]
for i, (label, factory, shape, train, distinct, backend) in enumerate(cases):
    t_layer, e_layer = make_pair(factory, seed=i)
    pairs = run_pair(t_layer, e_layer, make_input(shape, i, distinct),
                     backend=None if backend == "-" else backend, train=train, seed=i)
    errs = {k: rel_err(*v) for k, v in pairs.items()}
    mabs = max(float(np.abs(np.asarray(a, np.float64) - b).max()) for a, b in pairs.values())
    fp32_rows.append((label, backend, errs, mabs))


def worst_param(errs):
    p = [v for k, v in errs.items() if k not in ("y", "dx")]
    return max(p) if p else None


fmt = lambda v: "-" if v is None else f"{v:.2e}"
md_table(["layer", "backend", "y", "dx", "dW (worst)", "max abs"],
         [(lab, b, fmt(e["y"]), fmt(e["dx"]), fmt(worst_param(e)), f"{a:.2e}")
          for lab, b, e, a in fp32_rows])
fp32_worst = max(max(e.values()) for _, _, e, _ in fp32_rows)
print(f"worst fp32 relative error over {len(fp32_rows)} layer runs: {fp32_worst:.3g} (tolerance {FP32_RTOL:g})")
'''),
    ("code", r'''
# Worst relative error per layer (over tensors and backends), log scale; exact
# results (0) are drawn at 1e-10.
labels = list(dict.fromkeys(lab for lab, *_ in fp32_rows))
worst = [max(max(e.values()) for lab2, _, e, _ in fp32_rows if lab2 == lab) for lab in labels]
fig, ax = plt.subplots(figsize=(8, 5))
ax.barh(labels, np.maximum(worst, 1e-10), color="tab:blue")
ax.axvline(FP32_RTOL, color="tab:red", ls="--", label=f"tolerance {FP32_RTOL:g}")
ax.set_xscale("log")
ax.set_xlim(1e-10, 1e-2)
ax.invert_yaxis()
ax.set_xlabel("max |edgetrain - torch| / max |torch|  (worst tensor, worst backend)")
ax.set_title("fp32 per-layer parity")
ax.legend(loc="lower right")
plt.tight_layout()
plt.show()
'''),
    ("md", r'''
## Low precision: cosine similarity with torch fp32

Conv2d / Linear layers (and the small block) at each precision policy on every
backend. A backend without a low-precision primitive (e.g. `blas` has no int8)
falls back to `ref` with a `RuntimeWarning`; the fallbacks are counted below.

The last row is a small *stack* (conv -> BN -> ReLU -> max-pool -> linear), shown
for contrast and not judged at the per-layer floor. In int8 its `dx` and the conv's
`dW` drop to about 0.98: the int8 forward moves the conv's outputs by ~2%, enough to
change the winner of some 2x2 max-pool windows and the sign of some values at the
ReLU, so the gradient flows back to other positions than in torch (a discrete
change, not rounding); the linear layer's int8 backward adds its own error on top.
With an average pool instead of the max pool the same stack gives about 0.995.
`resnet_parity.ipynb` shows how this grows over a whole network.
'''),
    ("code", r'''
lowp = {}          # (label, precision, backend) -> {"y": cos, "dx": cos, "dW": worst cos}
fallbacks = set()  # edgetrain warns once per operation and backend that falls back
for i, (label, factory, shape) in enumerate(PRODUCT_LAYERS + [STACK]):
    x = make_input(shape, i)
    for prec in PRECISIONS:
        for backend in BACKENDS:
            t_layer, e_layer = make_pair(factory, seed=i)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                pairs = run_pair(t_layer, e_layer, x, policy=prec, backend=backend, seed=i)
            fallbacks |= {str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)}
            cos = {k: cosine(*v) for k, v in pairs.items()}
            lowp[label, prec, backend] = {"y": cos["y"], "dx": cos["dx"],
                                          "dW": min(v for k, v in cos.items() if k not in ("y", "dx"))}

# Table: worst cosine over y, dx, dW and over backends, per layer and precision.
def worst_cos(label, prec, what=("y", "dx", "dW")):
    return min(lowp[label, prec, b][w] for b in BACKENDS for w in what)


md_table(["layer"] + PRECISIONS,
         [[lab] + [f"{worst_cos(lab, p):.6f}" for p in PRECISIONS] for lab, _, _ in PRODUCT_LAYERS]
         + [["**per-layer floor**"] + [f"{COS_MIN[p]}" for p in PRECISIONS]]
         + [[f"*{STACK[0]}*"] + [f"*{worst_cos(STACK[0], p):.6f}*" for p in PRECISIONS]])
lowp_worst = {p: min(worst_cos(lab, p) for lab, _, _ in PRODUCT_LAYERS) for p in PRECISIONS}
stack_cos = {p: worst_cos(STACK[0], p) for p in PRECISIONS}
print("worst cosine per precision, single layers:", {p: round(v, 6) for p, v in lowp_worst.items()})
print("the stack:", {p: round(v, 6) for p, v in stack_cos.items()})
print("backend fallbacks:" if fallbacks else "no backend fallbacks", *sorted(fallbacks), sep="\n  ")
'''),
    ("code", r'''
# 1 - cosine per layer and precision (worst backend), one panel per tensor; the
# dashed lines are the floors (1 - 0.9999 for bf16/fp16, 1 - 0.995 for int8).
fig, axes = plt.subplots(1, 3, figsize=(15, 5), sharey=True)
shown = [lab for lab, _, _ in PRODUCT_LAYERS + [STACK]]
xs = np.arange(len(shown))
width = 0.8 / len(PRECISIONS)
for ax, what in zip(axes, ("y", "dx", "dW")):
    for j, prec in enumerate(PRECISIONS):
        vals = [1.0 - worst_cos(lab, prec, (what,)) for lab in shown]
        ax.bar(xs + (j - 1.5) * width, np.maximum(vals, 1e-12), width, label=prec)
    ax.axhline(1 - COS_MIN["bf16"], color="k", ls="--", lw=1)
    ax.axhline(1 - COS_MIN["int8"], color="k", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_ylim(1e-9, 1e-1)
    ax.set_xticks(xs, shown, rotation=70, ha="right", fontsize=8)
    ax.set_title(f"1 - cos({what}) vs torch fp32")
axes[0].set_ylabel("1 - cosine similarity (worst backend)")
axes[0].legend()
plt.tight_layout()
plt.show()
'''),
    ("md", "## Results\n\n" + RESULTS_NOTE),
    ("code", r'''
RESULTS = {
    "backends": ",".join(BACKENDS),
    "n_fp32_runs": len(fp32_rows),
    "n_lowp_runs": len(lowp),
    "fp32_worst_rel_err": fp32_worst,
    "fp32_rel_err": {f"{lab} [{b}]": max(e.values()) for lab, b, e, _ in fp32_rows},
    "lowp_worst_cos": lowp_worst,
    "lowp_cos": {f"{lab} [{p}]": worst_cos(lab, p) for lab, _, _ in PRODUCT_LAYERS for p in PRECISIONS},
    "stack_cos": stack_cos,
    "fallback_warnings": len(fallbacks),
    "seconds": time.perf_counter() - T_START,
}
print(json.dumps({k: v for k, v in RESULTS.items() if not isinstance(v, dict)}, indent=1))
'''),
]

# ---------------------------------------------------------------------------
MNIST = [
    ("md", r"""
# LeNet on MNIST: edgetrain vs PyTorch, fp32 and low precision

One epoch over a 4,096-digit subset of the 10k MNIST digits (64 steps of batch 64),
LeNet with BatchNorm, SGD (lr 0.02, momentum 0.9, weight decay 5e-4), train-mode
BatchNorm. Every run starts from **the same weights** (a torch `LeNet`'s
`state_dict()` loaded into `et.models.lenet()`) and sees **the same batches in the
same order**. Runs: torch fp32; torch **float64** (the yardstick: how far float32
rounding alone moves a trajectory); edgetrain fp32, int8, int8-mixed and bf16
(`model.set_precision(...)`: conv / linear products only; master weights, BatchNorm
and optimizer state stay fp32). Test accuracy on the 2,000 test digits; the
low-precision models are evaluated in the precision they were trained in.

Tolerances (checked by `tests/test_notebooks.py`):

* **fp32, first 20 steps**: per-step loss `|et - torch| / |torch| <= 1e-3`, the
  tolerance and window of `tests/test_training_parity.py` (there, torch fp32 vs
  float64 drifts <= 3e-7 over 20 steps at this learning rate). Precondition, checked
  too: torch's own fp32-vs-float64 drift stays <= 1e-4 over those 20 steps.
* **fp32, whole epoch**: the trajectory is chaotic. A rounding difference, or a
  max-pool tie on the constant MNIST background resolved the other way, grows ~10x
  every few steps, in torch itself (compare torch fp32 with torch float64 below).
  So over the epoch edgetrain fp32 must stay as close to the float64 trajectory as
  torch fp32 does, within a factor 10 (or within 1e-3): per-step loss, and final
  weights and BN statistics per tensor (`max |diff| / max |ref|`).
* **Accuracy**: every edgetrain run within **3 pp** of torch fp32, and >= 0.80 (chance
  is 0.10). Why 3 pp: one short epoch at a constant lr leaves accuracy noisy; when
  this notebook was written, seeds 0-7 of this recipe gave edgetrain fp32 0.86-0.93
  and fp32 minus int8 from -0.55 to +2.0 pp (int8-mixed, bf16: within 1.05 pp), so
  3 pp is 1.5x the largest gap seen. The issue's 0.5 pp criterion is for the
  two-epoch recipe with lr decay of `tests/test_accuracy.py`.
"""),
    ("code", SETUP),
    ("code", MNIST_DIR + r"""

# The reference model in plain torch.nn, with edgetrain's (torchvision-style)
# state_dict keys: conv1, bn1, conv2, bn2, fc1, fc2, fc3.
class TorchLeNet(torch.nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)   # (N, 6, 28, 28)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, 5)                        # (N, 16, 10, 10) after a pool
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(400, 120)                          # 16 * 5 * 5 after the second pool
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        F = torch.nn.functional
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(F.relu(self.fc2(x)))


N_TRAIN, BATCH, LR, MOMENTUM, WEIGHT_DECAY, SEED = 4096, 64, 0.02, 0.9, 5e-4, 0
PARITY_STEPS = 20
PRECISIONS = ["fp32", "int8", "int8-mixed", "bf16"]


def normalize(images):
    # uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), MNIST's mean / std
    return np.ascontiguousarray(((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None])


x_train, y_train = et.data.load_mnist(MNIST10K, train=True)
x_test, y_test = et.data.load_mnist(MNIST10K, train=False)
x_train, y_train = normalize(x_train[:N_TRAIN]), y_train[:N_TRAIN].astype(np.int64)
x_test, y_test = normalize(x_test), y_test.astype(np.int64)
# One epoch of shuffled batches, drawn once: every run sees exactly these.
batches = [(np.array(bx.numpy(), np.float32), np.array(by.numpy(), np.int64))
           for bx, by in et.data.DataLoader((x_train, y_train), batch_size=BATCH, shuffle=True, seed=SEED)]
torch.manual_seed(SEED)
init_state = {k: v.clone() for k, v in TorchLeNet().state_dict().items()}
print(f"{len(batches)} steps of batch {BATCH}; {len(x_test)} test digits")
"""),
    ("code", r"""
def train_torch(dtype):
    model = TorchLeNet().to(dtype)
    model.load_state_dict(init_state)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    losses = []
    model.train()
    for bx, by in batches:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(bx).to(dtype)), torch.from_numpy(by))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test).to(dtype)).argmax(1).numpy() == y_test).mean())
    state = {k: v.double().numpy() for k, v in model.state_dict().items()}
    return np.array(losses), acc, state


def train_edgetrain(precision):
    model = et.models.lenet()
    model.load_state_dict(init_state)           # torch tensors load directly
    model.set_precision(precision)
    et.manual_seed(SEED)                        # int8 gradients: stochastic rounding
    opt = et.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    crit = et.nn.CrossEntropyLoss()
    losses = []
    model.train()
    for bx, by in batches:
        opt.zero_grad()
        loss = crit(model(et.tensor(bx)), et.tensor(by, dtype="int64"))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with et.no_grad():                          # evaluated in its own precision
        acc = float((model(et.tensor(x_test)).numpy().argmax(1) == y_test).mean())
    state = {k: np.asarray(v, np.float64) for k, v in model.state_dict().items()}
    return np.array(losses), acc, state


runs, seconds = {}, {}
for name, fn, arg in [("torch fp32", train_torch, torch.float32), ("torch fp64", train_torch, torch.float64)] + \
                     [(f"edgetrain {p}", train_edgetrain, p) for p in PRECISIONS]:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # backend -> ref fallbacks, if any
        runs[name] = train_torch(arg) if fn is train_torch else train_edgetrain(arg)
    seconds[name] = time.perf_counter() - t0
    print(f"{name:22s} {seconds[name]:5.1f} s  loss {runs[name][0][0]:.4f} -> {runs[name][0][-1]:.4f}  "
          f"test accuracy {runs[name][1]:.4f}")
"""),
    ("md", r"""
## Per-step loss

Left: the loss of every run. Right: relative differences per step, log scale. Up to
about step 15-20 edgetrain fp32 and torch fp32 agree to float32 round-off; then a
discrete event (a tie, a ReLU sign) in one of the runs makes the trajectories part
and the gap grows exponentially; the torch fp32-vs-float64 curve shows the same
growth, so this is the float32 trajectory's sensitivity, not an error of either
framework. Where two of the three fp32 curves coincide, the third pair agrees far
more closely: e.g. edgetrain fp32 vs torch fp32 on top of torch fp32 vs float64 means
that edgetrain fp32 stayed with the float64 trajectory and torch fp32 left it. The
low-precision runs differ from the start by their rounding.
"""),
    ("code", r"""
ref32, ref64 = runs["torch fp32"][0], runs["torch fp64"][0]
steps = np.arange(1, len(ref32) + 1)


def rel_per_step(a, ref):
    return np.abs(a - ref) / np.abs(ref)


fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.5))
for name, (losses, _, _) in runs.items():
    ax1.plot(steps, losses, label=name, lw=1.2, ls="--" if name == "torch fp64" else "-")
ax1.set_xlabel("step")
ax1.set_ylabel("training loss (batch)")
ax1.set_title("LeNet, one epoch of 4,096 MNIST digits")
ax1.legend()
# (label, curve, style); two fp32 curves coincide when the third pair agrees closely
curves = [("edgetrain fp32 vs torch fp32", rel_per_step(runs["edgetrain fp32"][0], ref32), dict(lw=2.5)),
          ("torch fp32 vs torch fp64", rel_per_step(ref32, ref64), dict(lw=1.5, ls="--", color="k")),
          ("edgetrain fp32 vs torch fp64", rel_per_step(runs["edgetrain fp32"][0], ref64), dict(lw=1.5))]
curves += [(f"edgetrain {p} vs torch fp32", rel_per_step(runs[f"edgetrain {p}"][0], ref32), dict(lw=0.8, alpha=0.7))
           for p in PRECISIONS[1:]]
for label, c, style in curves:
    ax2.semilogy(steps, np.maximum(c, 1e-9), label=label, **style)
ax2.axhline(1e-3, color="tab:red", ls=":", lw=1)
ax2.axvline(PARITY_STEPS + 0.5, color="gray", ls=":", lw=1)
ax2.set_xlabel("step")
ax2.set_ylabel("|loss - reference| / |reference|")
ax2.set_title("per-step loss differences (0 drawn at 1e-9)")
ax2.legend(fontsize=8)
plt.tight_layout()
plt.show()
"""),
    ("md", r"""
## Summary table and final weights

`max |diff| / max |ref|` per state_dict tensor (weights, biases, BN running
statistics; `num_batches_tracked` compared exactly) after the epoch.
"""),
    ("code", r"""
def state_rel(a, ref):
    # per tensor max |a - ref| / max |ref|; the counters compared exactly
    out = {}
    for k, r in ref.items():
        if k.endswith("num_batches_tracked"):
            assert int(a[k]) == int(r), f"{k}: {int(a[k])} != {int(r)}"
            continue
        out[k] = rel_err(a[k], r)
    return out


s32, s64 = runs["torch fp32"][2], runs["torch fp64"][2]
w_rel = {"torch fp32 vs fp64": state_rel(s32, s64),
         "edgetrain fp32 vs torch fp64": state_rel(runs["edgetrain fp32"][2], s64)}
w_rel.update({f"edgetrain {p} vs torch fp32": state_rel(runs[f"edgetrain {p}"][2], s32) for p in PRECISIONS})

rows = []
for name, (losses, acc, _) in runs.items():
    first = rel_per_step(losses, ref32)[:PARITY_STEPS].max() if name != "torch fp32" else 0.0
    whole = rel_per_step(losses, ref32).max() if name != "torch fp32" else 0.0
    wkey = {"torch fp64": "torch fp32 vs fp64"}.get(name, f"{name} vs torch fp32")
    wmax = max(w_rel[wkey].values()) if wkey in w_rel else 0.0
    rows.append((name, f"{losses[-1]:.4f}", f"{acc:.4f}", f"{first:.2e}", f"{whole:.2e}", f"{wmax:.2e}",
                 f"{seconds[name]:.1f}"))
md_table(["run", "final loss", "test acc", f"loss rel diff, steps 1-{PARITY_STEPS}",
          "loss rel diff, epoch", "weights rel diff (worst tensor)", "s"], rows)
print("columns 4-6 are against torch fp32 (torch fp64's row: fp64 vs fp32)")

keys = list(s32)
keys = [k for k in keys if not k.endswith("num_batches_tracked")]
fig, ax = plt.subplots(figsize=(14, 4))
width = 0.8 / len(w_rel)
for j, (label, d) in enumerate(w_rel.items()):
    ax.bar(np.arange(len(keys)) + (j - len(w_rel) / 2 + 0.5) * width, [max(d[k], 1e-9) for k in keys],
           width, label=label)
ax.set_yscale("log")
ax.set_ylim(1e-9, 1e2)
ax.set_xticks(np.arange(len(keys)), keys, rotation=60, ha="right", fontsize=8)
ax.set_ylabel("max |diff| / max |ref|")
ax.set_title("final state after one epoch, per tensor (0 drawn at 1e-9)")
ax.legend(fontsize=8, ncol=3, loc="upper center")
plt.tight_layout()
plt.show()
"""),
    ("md", "## Results\n\n" + RESULTS_NOTE),
    ("code", r"""
et32 = runs["edgetrain fp32"][0]
RESULTS = {
    "steps": len(batches),
    "parity_steps": PARITY_STEPS,
    "fp32_loss_rel_first": float(rel_per_step(et32, ref32)[:PARITY_STEPS].max()),
    "torch_fp32_vs_fp64_loss_rel_first": float(rel_per_step(ref32, ref64)[:PARITY_STEPS].max()),
    "fp32_loss_rel_epoch": float(rel_per_step(et32, ref32).max()),
    "fp32_vs_fp64_loss_rel_epoch": float(rel_per_step(et32, ref64).max()),
    "torch_fp32_vs_fp64_loss_rel_epoch": float(rel_per_step(ref32, ref64).max()),
    "fp32_vs_fp64_state_rel": max(w_rel["edgetrain fp32 vs torch fp64"].values()),
    "torch_fp32_vs_fp64_state_rel": max(w_rel["torch fp32 vs fp64"].values()),
    "fp32_vs_torch_state_rel": max(w_rel["edgetrain fp32 vs torch fp32"].values()),
    "loss_first": float(ref32[0]),
    "loss_last": float(ref32[-1]),
    "accuracy": {name: acc for name, (_, acc, _) in runs.items()},
    "lowp_loss_rel_epoch": {p: float(rel_per_step(runs[f"edgetrain {p}"][0], ref32).max()) for p in PRECISIONS[1:]},
    "lowp_state_rel": {p: max(w_rel[f"edgetrain {p} vs torch fp32"].values()) for p in PRECISIONS[1:]},
    "seconds": time.perf_counter() - T_START,
}
print(json.dumps({k: v for k, v in RESULTS.items() if not isinstance(v, dict)}, indent=1))
print(json.dumps(RESULTS["accuracy"], indent=1))
"""),
]

# ---------------------------------------------------------------------------
RESNET = [
    ("md", r"""
# ResNet-18 parity: edgetrain vs PyTorch

`et.models.resnet18(num_classes=10, small_input=True)` (3x3 stride-1 stem, no
max-pool, for 32x32 images) against the same network written in plain `torch.nn`
below, with **the same weights** (the torch model's `state_dict()` loaded into
edgetrain) on **the same batches** (random 3x32x32 images and labels, batch 8, the
recipe of `tests/test_training_parity.py`). BatchNorm in train mode throughout.

1. **One batch, fp32**: logits, loss, and every parameter's gradient. As a
   yardstick, the same torch model in **float64** gives the exact gradient; we show
   how far *both* float32 implementations are from it.
2. **10 SGD steps** (lr 2e-4, momentum 0.9, weight decay 5e-4): per-step loss.
   Why the small lr: ResNet + BatchNorm training is chaotic in float32 at larger
   rates; `tests/test_training_parity.py` measured torch fp32 vs float64 loss drift
   over 20 steps of batch 8: 7e-3 at lr 2e-3, 1e-3 at 5e-4, 9e-5 at 2e-4. At 2e-4 a
   5e-3 tolerance is far above float32's own drift.
3. **Low precision**: the gradients of the same batch under bf16, fp16, int8 and
   int8-mixed, as cosine similarity with the float64 gradient, per parameter; and
   int8 split by pass (forward only / backward only) to show where the error
   comes from.

Tolerances (checked by `tests/test_notebooks.py`):

* logits and loss: `max |et - torch| / max |torch| <= 1e-4`, as `tests/test_models.py`.
* fp32 gradients vs float64: cosine >= 0.999 for **every** parameter. Not a
  relative error per tensor: when a ReLU input lies within float32 rounding of 0,
  a float32 run may give it the other sign than float64; that unit's gradient then
  changes, BatchNorm spreads the change over its channel, and the backward pass
  carries it to every tensor before it, by up to several percent of a tensor's
  largest entry. Which implementation hits such a flip on a given batch is a matter
  of summation order (section 1 counts torch fp32's flips against float64 on this
  batch). The cosine of an affected tensor stays above 0.9999, so 0.999 is far
  from float32's noise and still 10x tighter than fp16's whole-network error.
* SGD: per-step loss `|et - torch| / |torch| <= 5e-3` and each conv/fc weight's update
  (final - initial) within 0.1 of its norm, as `tests/test_training_parity.py`.
* Low precision, whole network (regression floors below the measured values with
  margin; the issue's >= 0.9999 / >= 0.995 floors are per layer, see
  `per_layer_parity.ipynb`): median cosine over conv/fc weight gradients >= 0.9
  (bf16), >= 0.98 (fp16), >= 0.6 (int8, int8-mixed), >= 0.95 (int8 backward passes
  only); `fc.weight` >= 0.999 (bf16) and >= 0.99 (int8); loss within 1e-2 (bf16),
  1e-3 (fp16) and 5e-2 (int8) relative (bf16 keeps 8 significant bits: 2^-9 = 2e-3
  per rounding). A wrong gradient (a sign, a transpose, a missing term) gives
  cosines near 0.
"""),
    ("code", SETUP),
    ("code", r"""
import copy

nn = torch.nn


# The reference: torchvision's ResNet-18 layout and state_dict keys (conv1, bn1,
# layer1.0.conv1, ..., layer2.0.downsample.0, ..., fc) in plain torch.nn.
class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:     # 1x1 conv + BN on the shortcut
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class TorchResNet18(nn.Module):
    # small_input stem: 3x3 stride-1 conv1, no max-pool (32x32 -> 32, 16, 8, 4 per stage)
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        widths, inplanes = (64, 128, 256, 512), 64
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(inplanes, planes, stride),
                                                         BasicBlock(planes, planes)))
            inplanes = planes
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():                  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


STEPS, BATCH, LR, MOMENTUM, WEIGHT_DECAY = 10, 8, 2e-4, 0.9, 5e-4
rng = np.random.default_rng(0)
x_all = rng.standard_normal((STEPS * BATCH, 3, 32, 32)).astype(np.float32)
y_all = rng.integers(0, 10, STEPS * BATCH).astype(np.int64)
batches = [(np.array(bx.numpy(), np.float32), np.array(by.numpy(), np.int64))
           for bx, by in et.data.DataLoader((x_all, y_all), batch_size=BATCH, shuffle=True, seed=1)]

torch.manual_seed(0)
tm = TorchResNet18(num_classes=10)
tm64 = copy.deepcopy(tm).double()                  # the float64 yardstick
init_state = {k: v.clone() for k, v in tm.state_dict().items()}
em = et.models.resnet18(num_classes=10, small_input=True)
em.load_state_dict(init_state)
assert list(em.state_dict()) == list(init_state), "state_dict keys differ"
print(f"{sum(p.numel() for p in tm.parameters()):,} parameters in {len(list(tm.parameters()))} tensors; "
      f"{len(batches)} batches of {BATCH}")
"""),
    ("md", r"""
## 1. One batch in fp32: logits, loss, gradients

Step 1 of the run: forward (train-mode BatchNorm) and backward of the first batch
in torch fp32, torch float64 and edgetrain fp32. Section 2 continues from here.
"""),
    ("code", r"""
x0, y0 = batches[0]
# Every ReLU's input in torch fp32 and fp64 (in call order) to count sign flips.
relu_in = {id(tm): [], id(tm64): []}
hooks = [m.register_forward_pre_hook(lambda m, inp, key=id(model): relu_in[key].append(inp[0].detach().double().clone()))
         for model in (tm, tm64) for m in model.modules() if isinstance(m, nn.ReLU)]
t0 = time.perf_counter()
out_t = tm(torch.from_numpy(x0))
loss_t = nn.functional.cross_entropy(out_t, torch.from_numpy(y0))
loss_t.backward()
out_64 = tm64(torch.from_numpy(x0).double())
loss_64 = nn.functional.cross_entropy(out_64, torch.from_numpy(y0))
loss_64.backward()
t1 = time.perf_counter()
for h in hooks:
    h.remove()
relu_flips = sum(int(((a > 0) != (b > 0)).sum()) for a, b in zip(relu_in[id(tm)], relu_in[id(tm64)]))
n_relu = sum(a.numel() for a in relu_in[id(tm)])
del relu_in
out_e = em(et.tensor(x0))
loss_e = et.nn.functional.cross_entropy(out_e, et.tensor(y0, dtype="int64"))
loss_e.backward()
t2 = time.perf_counter()
print(f"forward + backward: torch fp32 + fp64 {t1 - t0:.1f} s, edgetrain fp32 {t2 - t1:.1f} s")

logits_rel = rel_err(out_e.detach().numpy(), out_t.detach().numpy())
loss_rel = abs(loss_e.item() - loss_t.item()) / abs(loss_t.item())
g_t = {k: p.grad.numpy().astype(np.float64) for k, p in tm.named_parameters()}
g_64 = {k: p.grad.numpy() for k, p in tm64.named_parameters()}
g_e = {k: p.grad.numpy().astype(np.float64) for k, p in em.named_parameters()}
names = list(g_64)
assert list(g_e) == names
pairs = {"edgetrain fp32 vs torch fp32": (g_e, g_t),
         "edgetrain fp32 vs torch fp64": (g_e, g_64),
         "torch fp32 vs torch fp64": (g_t, g_64)}
grad_rel = {lab: {k: rel_err(a[k], b[k]) for k in names} for lab, (a, b) in pairs.items()}
grad_cos = {lab: {k: cosine(a[k], b[k]) for k in names} for lab, (a, b) in pairs.items()}

md_table(["comparison", "median rel err", "worst rel err (tensor)", "worst cosine"],
         [(lab, f"{np.median(list(r.values())):.2e}", f"{max(r.values()):.2e} ({max(r, key=r.get)})",
           f"{min(grad_cos[lab].values()):.7f}") for lab, r in grad_rel.items()])
print(f"logits: rel err {logits_rel:.2e}; loss: edgetrain {loss_e.item():.6f}, torch {loss_t.item():.6f}, "
      f"fp64 {loss_64.item():.6f} (rel err {loss_rel:.2e})")
print(f"torch fp32 vs fp64: {relu_flips} of {n_relu:,} ReLU inputs have opposite signs")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.5))
for lab, r in grad_rel.items():
    ax1.semilogy(np.sort(np.maximum(list(r.values()), 1e-12))[::-1], label=lab, marker=".", lw=1)
    ax2.semilogy(np.sort(np.maximum(1.0 - np.array(list(grad_cos[lab].values())), 1e-16))[::-1],
                 label=lab, marker=".", lw=1)
ax2.axhline(1e-3, color="k", ls="--", lw=1, label="tolerance (vs float64)")
ax1.set_ylabel("max |diff| / max |ref|")
ax2.set_ylabel("1 - cosine (0 drawn at 1e-16)")
for ax in (ax1, ax2):
    ax.set_xlabel(f"parameter tensors, sorted (of {len(names)})")
    ax.legend(fontsize=8)
fig.suptitle("ResNet-18 gradients, one batch, per parameter tensor")
plt.tight_layout()
plt.show()
"""),
    ("md", r"""
## 2. Ten SGD steps

The update of step 1 uses the gradients above; then nine more batches. Both
frameworks run SGD with the same hyper-parameters.
"""),
    ("code", r"""
opt_t = torch.optim.SGD(tm.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
opt_e = et.optim.SGD(em.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
losses_t, losses_e = [loss_t.item()], [loss_e.item()]
opt_t.step()
opt_e.step()
t0 = time.perf_counter()
for bx, by in batches[1:]:
    opt_t.zero_grad()
    lt = nn.functional.cross_entropy(tm(torch.from_numpy(bx)), torch.from_numpy(by))
    lt.backward()
    opt_t.step()
    losses_t.append(lt.item())
    opt_e.zero_grad()
    le = et.nn.functional.cross_entropy(em(et.tensor(bx)), et.tensor(by, dtype="int64"))
    le.backward()
    opt_e.step()
    losses_e.append(le.item())
print(f"{len(batches) - 1} more steps in both frameworks: {time.perf_counter() - t0:.1f} s")
losses_t, losses_e = np.array(losses_t), np.array(losses_e)
step_rel = np.abs(losses_e - losses_t) / np.abs(losses_t)

# the update (final - initial) of every conv / fc weight, relative to its norm
sd_t, sd_e = tm.state_dict(), em.state_dict()
update_rel = {}
for k in init_state:
    if k.endswith("weight") and ("conv" in k or "downsample.0" in k or k.startswith("fc")):
        w0 = init_state[k].numpy().astype(np.float64)
        dt, de = sd_t[k].numpy() - w0, np.asarray(sd_e[k], np.float64) - w0
        update_rel[k] = float(np.linalg.norm(de - dt) / np.linalg.norm(dt))

md_table(["step"] + [str(i + 1) for i in range(len(losses_t))],
         [["torch"] + [f"{v:.5f}" for v in losses_t], ["edgetrain"] + [f"{v:.5f}" for v in losses_e],
          ["rel diff"] + [f"{v:.1e}" for v in step_rel]])
print(f"per-step loss: max rel diff {step_rel.max():.2e} (tolerance 5e-3); weight updates: worst "
      f"relative difference {max(update_rel.values()):.2e} ({max(update_rel, key=update_rel.get)}; tolerance 0.1)")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4))
ax1.plot(np.arange(1, len(losses_t) + 1), losses_t, "o-", label="torch fp32")
ax1.plot(np.arange(1, len(losses_e) + 1), losses_e, "x--", label="edgetrain fp32")
ax1.set_xlabel("step")
ax1.set_ylabel("loss")
ax1.set_title(f"ResNet-18, SGD lr {LR:g}, random data")
ax1.legend()
ax2.semilogy(np.arange(1, len(step_rel) + 1), np.maximum(step_rel, 1e-9), "o-")
ax2.axhline(5e-3, color="k", ls="--", lw=1, label="tolerance")
ax2.set_xlabel("step")
ax2.set_ylabel("|loss_et - loss_torch| / |loss_torch|")
ax2.legend()
plt.tight_layout()
plt.show()
"""),
    ("md", r"""
## 3. Low precision: gradient cosine similarity over the whole network

The first batch again, at the initial weights, under each precision policy; each
parameter's gradient against the float64 gradient of section 1. `int8 fwd only` is
`{"forward": "int8", "backward_data": "fp32", "backward_weight": "fp32"}` and
`int8 bwd only` the converse.

What to expect. Per layer, int8 is within cosine 0.9995 of fp32 (per-layer
notebook), but in a network with BatchNorm in train mode at initialisation the
gradients are sensitive to the forward activations: a perturbation of the
activations by quantization changes every later layer's BatchNorm input and the
backward pass's ReLU masks, and the error compounds over 17 convolutions. The
split by pass shows that the forward pass carries almost all of it: with an fp32
forward, the int8 backward passes alone keep the cosine near 0.99. PyTorch's own
bf16 autocast shows the same kind of loss on this batch (set `TORCH_AUTOCAST = True`
below to compute it; it takes tens of seconds on a CPU without native bf16, so it
is off by default). Training still works at these cosines (`mnist_parity.ipynb`,
and the accuracy table of issue 3), as SGD averages the gradient noise over steps.
"""),
    ("code", r"""
TORCH_AUTOCAST = False
POLICIES = {
    "bf16": "bf16",
    "fp16": "fp16",
    "int8": "int8",
    "int8-mixed": "int8-mixed",
    "int8 fwd only": {"forward": "int8", "backward_data": "fp32", "backward_weight": "fp32"},
    "int8 bwd only": {"forward": "fp32", "backward_data": "int8", "backward_weight": "int8"},
}
em_lp = et.models.resnet18(num_classes=10, small_input=True)
em_lp.load_state_dict(init_state)
weights = [k for k in names if k.endswith("weight") and ("conv" in k or "downsample.0" in k or k.startswith("fc"))]
lp_cos, lp_loss = {}, {}
t0 = time.perf_counter()
for label, policy in POLICIES.items():
    em_lp.zero_grad()
    et.manual_seed(0)                          # int8 gradients: stochastic rounding
    with et.precision(policy), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # backend -> ref fallbacks, if any
        loss = et.nn.functional.cross_entropy(em_lp(et.tensor(x0)), et.tensor(y0, dtype="int64"))
        loss.backward()
    lp_loss[label] = loss.item()
    lp_cos[label] = {k: cosine(p.grad.numpy(), g_64[k]) for k, p in em_lp.named_parameters()}
if TORCH_AUTOCAST:
    ta = copy.deepcopy(tm)
    ta.load_state_dict(init_state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ta(torch.from_numpy(x0))
    loss = nn.functional.cross_entropy(out.float(), torch.from_numpy(y0))
    loss.backward()
    lp_loss["torch bf16 autocast"] = loss.item()
    lp_cos["torch bf16 autocast"] = {k: cosine(p.grad.float().numpy(), g_64[k]) for k, p in ta.named_parameters()}
print(f"{len(lp_cos)} gradient evaluations in {time.perf_counter() - t0:.1f} s")

summary = {}
for label, c in lp_cos.items():
    wc = [c[k] for k in weights]
    summary[label] = {"loss_rel": abs(lp_loss[label] - loss_64.item()) / loss_64.item(),
                      "min": min(wc), "median": float(np.median(wc)), "fc": c["fc.weight"],
                      "all_min": min(c.values())}
md_table(["policy", "loss rel diff", "conv/fc weights: min cos", "median cos", "fc.weight cos",
          "any parameter: min cos"],
         [(lab, f"{s['loss_rel']:.1e}", f"{s['min']:.4f}", f"{s['median']:.4f}", f"{s['fc']:.5f}",
           f"{s['all_min']:.4f}") for lab, s in summary.items()])

fig, ax = plt.subplots(figsize=(13, 4.5))
for label, c in lp_cos.items():
    ax.plot(np.arange(len(weights)), [c[k] for k in weights], marker=".", label=label)
ax.plot(np.arange(len(weights)), [grad_cos["edgetrain fp32 vs torch fp64"][k] for k in weights],
        "k:", label="fp32")
ax.set_xticks(np.arange(len(weights)), [k.replace(".weight", "") for k in weights], rotation=70,
              ha="right", fontsize=8)
ax.set_ylabel("cosine with the float64 gradient")
ax.set_title("conv / fc weight gradients in network order (input on the left)")
ax.legend(fontsize=8, ncol=2)
plt.tight_layout()
plt.show()
"""),
    ("md", "## Results\n\n" + RESULTS_NOTE),
    ("code", r"""
RESULTS = {
    "logits_rel_err": logits_rel,
    "loss_rel_err": loss_rel,
    "n_params": len(names),
    "grad_min_cos_vs_fp64": min(grad_cos["edgetrain fp32 vs torch fp64"].values()),
    "grad_median_rel_vs_fp64": float(np.median(list(grad_rel["edgetrain fp32 vs torch fp64"].values()))),
    "grad_worst_rel_vs_fp64": max(grad_rel["edgetrain fp32 vs torch fp64"].values()),
    "torch_grad_worst_rel_vs_fp64": max(grad_rel["torch fp32 vs torch fp64"].values()),
    "grad_worst_rel_vs_torch": max(grad_rel["edgetrain fp32 vs torch fp32"].values()),
    "torch_relu_flips_vs_fp64": relu_flips,
    "sgd_steps": len(losses_t),
    "sgd_loss_rel_max": float(step_rel.max()),
    "sgd_loss_first_last": [float(losses_t[0]), float(losses_t[-1])],
    "sgd_update_rel_max": max(update_rel.values()),
    "lowp": {lab: {k: float(v) for k, v in s.items()} for lab, s in summary.items()},
    "seconds": time.perf_counter() - T_START,
}
print(json.dumps(RESULTS, indent=1))
"""),
]


# ---------------------------------------------------------------------------
NOTEBOOKS = {
    "per_layer_parity.ipynb": PER_LAYER,
    "mnist_parity.ipynb": MNIST,
    "resnet_parity.ipynb": RESNET,
}


def build(cells, stem):
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, src) in enumerate(cells):
        src = textwrap.dedent(src).strip("\n")
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell["id"] = f"{stem.replace('_', '-')}-{i:02d}"    # fixed ids: deterministic output
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def notebooks():
    """{file name: NotebookNode}, without outputs."""
    return {name: build(cells, Path(name).stem) for name, cells in NOTEBOOKS.items()}


def write_atomic(path, text):
    """temp file, fsync, rename; keeps the file's mode (0644 for a new one:
    mkstemp's own 0600 would make the notebook private)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    for name, nb in notebooks().items():
        write_atomic(HERE / name, nbformat.writes(nb) + "\n")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
