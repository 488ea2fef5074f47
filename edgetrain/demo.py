"""edgetrain demo (`make demo`): the edge scenario, end to end, beside PyTorch.

    python -m edgetrain.demo [--out runs/demo] [--epochs 2] [--threads 2]

1. Elsewhere: a LeNet is trained in PyTorch on Fashion-MNIST (Debian's
   dataset-fashion-mnist; one epoch) and saved with torch.save -- the model a
   device receives from the cloud.
2. On the device: `edgetrain train --init` imports it and `--train-only fc`
   customizes its classifier on the local data, the MNIST digits of
   ../shared/data/mnist10k (8,000 training / 2,000 test images), in int8: every
   forward, backward-data and backward-weight product of the trained layers runs
   as an int8 forward primitive on the backend; the conv layers are frozen.
3. `edgetrain compare` does the same fine-tuning in PyTorch fp32 and in
   edgetrain int8 from the same weights with the same batches, each in its own
   process with the same thread count, and reports accuracy before and after,
   time per step and peak memory.

PyTorch is only the cloud side and the competitor here: without it the demo
says so and stops. Exit status 1 if the fine-tuned edgetrain model ends below
the target accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_NORM = (0.2860, 0.3530)          # mean, std of the training images, pixel / 255
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST10K = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist10k")
TARGET_ACC = 0.90                        # the customized model on the digits test set


def pretrain_in_torch(path, threads, seed=0):
    """Step 1, PyTorch only: LeNet, Fashion-MNIST, one epoch (SGD momentum 0.9, lr 0.05
    decayed linearly, batch 64); torch.save(state_dict) to `path`."""
    import torch

    from edgetrain.data import load_mnist
    from edgetrain.models.torch_reference import TorchLeNet

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x, y = load_mnist(FASHION_DIR, train=True)
    xt, yt = load_mnist(FASHION_DIR, train=False)

    def norm(a):   # uint8 (N, 28, 28) -> float32 (N, 1, 28, 28)
        return torch.from_numpy(((a.astype(np.float32) / 255 - FASHION_NORM[0])
                                 / FASHION_NORM[1])[:, None].copy())

    x, xt = norm(x), norm(xt)
    y, yt = torch.from_numpy(y.astype(np.int64)), torch.from_numpy(yt.astype(np.int64))
    model = TorchLeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = torch.nn.CrossEntropyLoss()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    steps = (len(x) + 63) // 64
    t0 = time.perf_counter()
    model.train()
    for i in range(steps):
        for g in opt.param_groups:
            g["lr"] = 0.05 * (1 - i / steps)
        idx = order[i * 64:(i + 1) * 64]
        opt.zero_grad()
        crit(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    tmp = path + ".tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return acc, time.perf_counter() - t0


def _run(cmd, env):
    """Prints the command as a user would type it, runs it, fails the demo on error."""
    shown = ["edgetrain"] + cmd[3:] if cmd[1:3] == ["-m", "edgetrain"] else cmd
    print("\n$ " + " ".join(shlex.quote(os.path.relpath(c) if os.path.isabs(c) else c)
                            for c in shown), flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env)
    if r.returncode != 0:
        raise SystemExit(f"demo: `{' '.join(shown[:2])}` failed (exit status {r.returncode})")
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "runs", "demo"),
                   help="where the demo's files go (default runs/demo)")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="threads of each framework (default 2)")
    p.add_argument("--train-only", default="fc",
                   help="parameter-name prefixes fine-tuned (default fc: fc1, fc2, fc3)")
    p.add_argument("--data-dir", default=MNIST10K, help="the local data: MNIST-format digits")
    args = p.parse_args(argv)
    for d, what in ((FASHION_DIR, "Fashion-MNIST (Debian's dataset-fashion-mnist: make apt)"),
                    (args.data_dir, "the MNIST digits (--data-dir)")):
        if not os.path.isdir(d):
            print(f"demo: {what} not found at {d}", file=sys.stderr)
            return 1
    try:
        import torch  # noqa: F401 - the cloud side of the scenario
    except ImportError:
        print("demo: the scenario starts from a PyTorch model, and torch is not installed "
              "(pip install torch)", file=sys.stderr)
        return 1

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    pt = os.path.join(out, "lenet-fashion-mnist.pt")
    tuned, cmp_dir = os.path.join(out, "finetune-int8"), os.path.join(out, "compare")
    for d in (tuned, cmp_dir):                   # the demo's own outputs of an earlier run
        shutil.rmtree(d, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    print("== 1. in the cloud: LeNet trained on Fashion-MNIST in PyTorch, saved with "
          "torch.save", flush=True)
    acc_f, s_f = pretrain_in_torch(pt, args.threads)
    print(f"Fashion-MNIST test accuracy {acc_f:.4f} after one epoch ({s_f:.1f} s) -> "
          f"{os.path.relpath(pt)}")

    common = ["--model", "lenet", "--data", "mnist", "--data-dir", args.data_dir,
              "--init", pt, "--train-only", args.train_only, "--epochs", str(args.epochs),
              "--batch-size", "64", "--lr", "0.05", "--seed", "0"]
    print(f"\n== 2. on the device: imported with --init, layers '{args.train_only}' "
          "fine-tuned on the local digits in int8 (conv layers frozen)", flush=True)
    s_train = _run([sys.executable, "-m", "edgetrain", "train", *common, "--precision", "int8",
                    "--out", tuned], env)

    print("\n== 3. the same fine-tuning in PyTorch fp32 and edgetrain int8, side by side",
          flush=True)
    _run([sys.executable, "-m", "edgetrain", "compare", *common, "--precisions", "int8",
          "--threads", str(args.threads), "--out", cmp_dir], env)

    with open(os.path.join(cmp_dir, "compare.json")) as f:
        runs = {r["precision"]: r for r in json.load(f)["runs"]}
    with open(os.path.join(tuned, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    t, e = runs["torch-fp32"], runs["int8"]
    print(f"\n== summary: LeNet from Fashion-MNIST (PyTorch) customized on "
          f"{args.epochs} epoch(s) of MNIST digits, training only '{args.train_only}'")
    print(f"{'':16}{'acc before':>12}{'acc after':>11}{'ms/step':>9}{'train s':>9}"
          f"{'peak RSS MiB':>14}")
    for name, r in (("PyTorch fp32", t), ("edgetrain int8", e)):
        print(f"{name:16}{r['before']['test_acc']:>12.4f}{r['test_acc']:>11.4f}"
              f"{r['ms_step_median']:>9.2f}{sum(x['train_s'] for x in r['epochs']):>9.1f}"
              f"{r['peak_rss_bytes'] / 2**20:>14.0f}")
    print(f"edgetrain / PyTorch time per step: {e['ms_step_median'] / t['ms_step_median']:.2f}x;"
          f" accuracy {100 * (e['test_acc'] - t['test_acc']):+.2f} pp")
    print(f"`edgetrain train` above: test accuracy {last['test_accuracy']:.4f} in "
          f"{s_train:.1f} s (the same run as compare's edgetrain int8: "
          f"{'identical' if abs(last['test_accuracy'] - e['test_acc']) < 1e-12 else 'DIFFERENT'}"
          f" accuracy); files in {os.path.relpath(out)}")
    if e["test_acc"] < TARGET_ACC:
        print(f"demo: edgetrain's fine-tuned accuracy {e['test_acc']:.4f} is below the target "
              f"{TARGET_ACC}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
