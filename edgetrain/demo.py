"""edgetrain demo: LeNet on Fashion-MNIST, edgetrain vs PyTorch, side by side.

    python -m edgetrain.demo [--epochs 1] [--backend onednn] [--data DIR] [--no-torch]

1. Trains `edgetrain.models.lenet` for one epoch on Fashion-MNIST (Debian's
   dataset-fashion-mnist, /usr/share/datasets/fashion-mnist) on the `onednn`
   backend: SGD, momentum 0.9, lr 0.05, batch 64, inputs normalised with the
   training set's mean/std. Prints per-epoch train loss, test accuracy and time
   per step.
2. Runs the SAME training in PyTorch -- the same initial weights (edgetrain's
   state_dict loaded into an identical torch model), the same batches in the
   same order, the same thread count -- and prints a comparison table.

PyTorch is only the competitor here: it is imported inside `run_torch`, and if
it is missing the second half is skipped with a note. Exit status 1 if a
framework ends below the accuracy target (0.85 after one epoch).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import edgetrain as et
from edgetrain.data import DataLoader, load_mnist

try:
    from tqdm import tqdm
except ImportError:  # tqdm is a dependency; degrade to no bars rather than fail
    def tqdm(it, **_):
        return it

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # of the 60k training images, pixel/255
TARGET_ACC = 0.85


def load_data(directory):
    x, y = load_mnist(directory, train=True)
    xt, yt = load_mnist(directory, train=False)

    def norm(a):  # uint8 (N, 28, 28) -> float32 (N, 1, 28, 28)
        return np.ascontiguousarray(((a.astype(np.float32) / 255.0 - FASHION_MEAN) / FASHION_STD)[:, None])

    return norm(x), y.astype(np.int64), norm(xt), yt.astype(np.int64)


def _summary(name, backend, losses, step_times, acc, epochs):
    st = np.asarray(step_times[5:] if len(step_times) > 10 else step_times)  # warm-up excluded
    return {"framework": name, "backend": backend, "epochs": epochs, "train_loss": float(np.mean(losses[-len(losses) // epochs:])),
            "test_acc": acc, "ms_step": 1e3 * float(np.median(st)), "ms_step_mean": 1e3 * float(np.mean(st)),
            "train_s": float(np.sum(step_times)), "steps": len(step_times)}


def run_edgetrain(data, init_state, args):
    x, y, xt, yt = data
    model = et.models.lenet()
    model.load_state_dict(init_state)
    opt = et.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    crit = et.nn.CrossEntropyLoss()
    loader = DataLoader((x, y), batch_size=args.batch_size, shuffle=True, seed=args.seed)
    losses, times = [], []
    with et.backend(args.backend):
        for epoch in range(args.epochs):
            model.train()
            ep_losses, ep_times = [], []
            for bx, by in tqdm(loader, desc=f"edgetrain[{args.backend}] epoch {epoch + 1}", leave=False):
                t0 = time.perf_counter()
                opt.zero_grad()
                loss = crit(model(bx), by)
                loss.backward()
                opt.step()
                ep_losses.append(loss.item())
                ep_times.append(time.perf_counter() - t0)
            acc = evaluate_edgetrain(model, xt, yt)
            losses += ep_losses
            times += ep_times
            print(f"edgetrain [{args.backend}] epoch {epoch + 1}: train loss {np.mean(ep_losses):.4f}  "
                  f"test acc {acc:.4f}  {1e3 * np.median(ep_times):.2f} ms/step (median)")
    return _summary("edgetrain", args.backend, losses, times, acc, args.epochs)


def evaluate_edgetrain(model, xt, yt, batch=1000):
    model.eval()
    correct = 0
    with et.no_grad():
        for i in range(0, len(xt), batch):
            logits = model(et.from_numpy(xt[i:i + batch]))
            correct += int((np.asarray(logits.numpy()).argmax(1) == yt[i:i + batch]).sum())
    return correct / len(xt)


def run_torch(data, init_state, args):
    try:
        import torch
        from torch import nn
    except ImportError:
        print("\nPyTorch is not installed: skipping the PyTorch half of the comparison "
              "(pip install torch to see it).")
        return None
    torch.set_num_threads(args.threads)

    class TorchLeNet(nn.Module):  # edgetrain.models.LeNet, layer for layer
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6)
            self.conv2, self.bn2 = nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16)
            self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            f = nn.functional
            x = f.max_pool2d(f.relu(self.bn1(self.conv1(x))), 2)
            x = f.max_pool2d(f.relu(self.bn2(self.conv2(x))), 2)
            x = f.relu(self.fc1(x.flatten(1)))
            return self.fc3(f.relu(self.fc2(x)))

    x, y, xt, yt = data
    model = TorchLeNet()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in init_state.items()})
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    # The same seed gives the same permutation, so the same batches in the same order.
    loader = DataLoader((x, y), batch_size=args.batch_size, shuffle=True, seed=args.seed)
    losses, times = [], []
    for epoch in range(args.epochs):
        model.train()
        ep_losses, ep_times = [], []
        for bx, by in tqdm(loader, desc=f"pytorch epoch {epoch + 1}", leave=False):
            tx, ty = torch.from_numpy(np.asarray(bx.numpy())), torch.from_numpy(np.asarray(by.numpy()))
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = crit(model(tx), ty)
            loss.backward()
            opt.step()
            ep_losses.append(loss.item())
            ep_times.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            acc = float((model(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean())
        losses += ep_losses
        times += ep_times
        print(f"pytorch {torch.__version__} epoch {epoch + 1}: train loss {np.mean(ep_losses):.4f}  "
              f"test acc {acc:.4f}  {1e3 * np.median(ep_times):.2f} ms/step (median)")
    return _summary(f"pytorch {torch.__version__}", "cpu eager", losses, times, acc, args.epochs)


def print_table(rows):
    print("\n| framework | backend | last-epoch train loss | test acc | ms/step (median) | ms/step (mean) | train time (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['framework']} | {r['backend']} | {r['train_loss']:.4f} | {r['test_acc']:.4f} | "
              f"{r['ms_step']:.2f} | {r['ms_step_mean']:.2f} | {r['train_s']:.1f} |")
    if len(rows) == 2:
        print(f"\nedgetrain / pytorch step time: {rows[0]['ms_step'] / rows[1]['ms_step']:.2f}x; "
              f"test accuracy difference {rows[0]['test_acc'] - rows[1]['test_acc']:+.4f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=FASHION_DIR, help="directory of MNIST-format IDX files")
    p.add_argument("--backend", default="onednn", help="edgetrain backend (default onednn)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for both frameworks (default: all cores)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch half")
    args = p.parse_args(argv)

    # Same thread count for both. edgetrain's OpenMP runtime (oneDNN, C kernels) uses every
    # core unless OMP_NUM_THREADS says otherwise; it is read when the extension loads.
    if hasattr(et, "set_num_threads"):
        et.set_num_threads(args.threads)
    elif args.threads != (os.cpu_count() or 1) and os.environ.get("OMP_NUM_THREADS") != str(args.threads):
        print(f"note: edgetrain's thread count is set by OMP_NUM_THREADS before start-up; "
              f"run OMP_NUM_THREADS={args.threads} python -m edgetrain.demo --threads {args.threads}")
    if args.backend not in et.backends():
        print(f"backend {args.backend!r} not available here (have {et.backends()}); "
              f"using {et.backends()[-1]!r}")
        args.backend = et.backends()[-1]
    try:
        data = load_data(args.data)
    except FileNotFoundError as e:
        print(f"{e}\nInstall Debian's dataset-fashion-mnist (make apt) or pass --data DIR.", file=sys.stderr)
        return 2
    print(f"Fashion-MNIST: {len(data[0])} train / {len(data[2])} test images from {args.data}; "
          f"LeNet+BN, SGD(lr={args.lr}, momentum=0.9), batch {args.batch_size}, "
          f"{args.epochs} epoch(s), {args.threads} thread(s)")

    et.manual_seed(args.seed)
    init_state = {k: np.array(v, copy=True) for k, v in et.models.lenet().state_dict().items()}

    rows = [run_edgetrain(data, init_state, args)]
    if not args.no_torch:
        r = run_torch(data, init_state, args)
        if r is not None:
            rows.append(r)
    print_table(rows)
    failed = [r["framework"] for r in rows if r["test_acc"] < TARGET_ACC]
    if failed:
        print(f"\nBELOW TARGET: {', '.join(failed)} under {TARGET_ACC} test accuracy")
        return 1
    print(f"\nall frameworks reached >= {TARGET_ACC} test accuracy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
