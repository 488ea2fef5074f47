"""Training-step time: edgetrain (each backend x precision) vs PyTorch eager fp32.

Same machine, same run, same thread count, same initial weights and batch;
warm-up steps are excluded; each figure is the median of --steps measured
steps. Reported: the speed-up against PyTorch fp32 and, for a low precision,
against edgetrain fp32 on the same backend (issue 3: the int8 step must beat
the fp32 step of its backend). Results go to
benchmarks/results/train_step.{json,md} (written atomically) with the
machine's description.

    .venv/bin/python benchmarks/bench_train_step.py [--steps 15] [--threads N]
        [--models lenet,resnet18_small] [--precisions fp32,int8] [--backends onednn,blas]
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import edgetrain as et  # noqa: E402
from edgetrain import checkpoint  # noqa: E402
from edgetrain.cli.compare import machine  # noqa: E402 - one machine description

CASES = [
    # (name, builder kwargs, input shape without batch, batch): issue 3's sizes
    ("lenet", dict(), (1, 28, 28), 128),
    ("resnet18_small", dict(small_input=True, num_classes=10), (3, 32, 32), 128),
]


def et_model(name, kw):
    return et.models.lenet(**kw) if name == "lenet" else et.models.resnet18(**kw)


def torch_model(name, kw):
    from edgetrain.models.torch_reference import TorchLeNet, torch_resnet
    return TorchLeNet(**kw) if name == "lenet" else torch_resnet("resnet18", **kw)


def time_steps(step, warmup, steps):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def atomic_write(path, text):
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--backends", default=",".join(b for b in et.backends() if b != "ref"))
    ap.add_argument("--precisions", default="fp32,int8",
                    help="comma-separated edgetrain policies (fp32, bf16, fp16, int8, int8-mixed)")
    ap.add_argument("--models", default=",".join(c[0] for c in CASES))
    args = ap.parse_args()
    precisions = args.precisions.split(",")
    for p in precisions:
        et.precision(p)  # validates the name (ValueError naming it)
    models = args.models.split(",")
    unknown = sorted(set(models) - {c[0] for c in CASES})
    if unknown:
        ap.error(f"unknown model(s) {unknown}: expected some of {[c[0] for c in CASES]}")

    import torch
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    rows = []
    for name, kw, shape, batch in CASES:
        if name not in models:
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        y = rng.integers(0, 10, batch).astype(np.int64)

        tm = torch_model(name, kw)
        tm.train()
        topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(tm(tx), ty)
            loss.backward()
            topt.step()

        t_torch, _ = time_steps(torch_step, args.warmup, args.steps)
        rows.append(dict(model=name, batch=batch, framework="pytorch", backend="-",
                         precision="fp32", median_s=t_torch, ratio=1.0, vs_fp32=None))
        print(f"{name:16s} b{batch:<4d} pytorch fp32           {t_torch * 1e3:9.1f} ms", flush=True)

        for b in args.backends.split(","):
            fp32_time = None
            for prec in precisions:
                model = et_model(name, kw)
                model.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
                model.train()
                opt = et.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                ex, ey = et.from_numpy(x), et.tensor(y, dtype="int64")

                def et_step():
                    opt.zero_grad()
                    loss = et.nn.functional.cross_entropy(model(ex), ey)
                    loss.backward()
                    opt.step()

                with et.backend(b), et.precision(prec):
                    t_et, _ = time_steps(et_step, args.warmup, args.steps)
                if prec == "fp32":
                    fp32_time = t_et
                vs = fp32_time / t_et if fp32_time and prec != "fp32" else None
                rows.append(dict(model=name, batch=batch, framework="edgetrain", backend=b,
                                 precision=prec, median_s=t_et, ratio=t_torch / t_et, vs_fp32=vs))
                extra = f"  vs edgetrain fp32 {vs:5.2f}x" if vs else ""
                print(f"{name:16s} b{batch:<4d} edgetrain/{b:7s}{prec:11s}{t_et * 1e3:9.1f} ms  "
                      f"speed-up vs pytorch {t_torch / t_et:5.2f}x{extra}", flush=True)

    info = dict(machine=machine(args.threads), threads=args.threads, steps=args.steps,
                warmup=args.warmup, torch=torch.__version__,
                int8_reduce_range=et.int8_reduce_range(), rows=rows)
    out = os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, "train_step.json"), json.dumps(info, indent=2) + "\n")
    lines = [f"# Training step: edgetrain vs PyTorch {torch.__version__} (eager fp32)", "",
             f"Machine: {info['machine']['cpu']} ({' '.join(info['machine']['isa'])}), "
             f"{info['machine']['cores']} cores; "
             f"threads {args.threads}; median of {args.steps} steps after {args.warmup} "
             f"warm-up steps; SGD momentum, cross-entropy, random data; int8 with "
             f"{'7-bit activations/gradients (reduce_range)' if info['int8_reduce_range'] else 'full 8-bit ranges'}.",
             "", "Command: `.venv/bin/python benchmarks/bench_train_step.py " + " ".join(sys.argv[1:]) + "`",
             "",
             "| model | batch | framework | backend | precision | median step (ms) | speed-up vs PyTorch fp32 "
             "| speed-up vs edgetrain fp32 (same backend) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        vs = f"{r['vs_fp32']:.2f}x" if r["vs_fp32"] else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['framework']} | {r['backend']} | "
                     f"{r['precision']} | {r['median_s'] * 1e3:.1f} | {r['ratio']:.2f}x | {vs} |")
    atomic_write(os.path.join(out, "train_step.md"), "\n".join(lines) + "\n")
    print("wrote benchmarks/results/train_step.{json,md}")


if __name__ == "__main__":
    main()
