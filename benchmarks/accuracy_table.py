"""Accuracy table (issue 3): edgetrain fp32 / bf16 / fp16 / int8 / int8-mixed vs PyTorch fp32.

For each model (`lenet`, 5 epochs; `resnet18(small_input=True)`, 2 epochs, both on
Fashion-MNIST) every precision, and PyTorch fp32, trains with the same recipe,
the same initial weights and the same batches in the same order:

- recipe: SGD momentum 0.9, no weight decay, batch 64, lr 0.05 decayed linearly
  to 0 over the whole run (per step); inputs normalised with the Fashion-MNIST
  training set's mean/std; cross-entropy; train-mode BatchNorm.
- init: the parent builds the edgetrain model once under `et.manual_seed(seed)`
  and saves its state_dict (.npz); every child loads it (PyTorch: the plain
  torch.nn twin in edgetrain.models.torch_reference, which has edgetrain's keys).
- batches: the parent draws the index order of every epoch from an edgetrain
  `DataLoader(shuffle=True, seed=seed)` and saves it; every child consumes it.
- precision: `et.precision(p)` is in force for training AND evaluation (each
  model is tested in the precision it was trained in).

Each (model, precision) run, and each PyTorch run, is a separate child process,
so its peak RSS (VmHWM) is that configuration's alone; the PyTorch child
never imports edgetrain, the edgetrain children never import torch. Per run:
final test accuracy, per-epoch train loss / test accuracy, per-step loss, median
time per step after warm-up (zero_grad + forward + backward + step; batch
gathering excluded), peak RSS and the peak before training starts (libraries and
data set loaded), peak saved conv/linear activation bytes (the max of
`et.saved_activation_bytes()` right after each forward; PyTorch: the bytes of
the fp32 inputs of its Conv2d/Linear modules in one forward, which is what an
fp32 edgetrain run saves), the share of the machine's CPU time other processes
used while it trained (a step time measured beside other work is not clean), and
the git commit(s) of the code it ran (more than one: resumed). A result may carry
"notes", a list of sentences a person added (e.g. what shared the machine); the
table prints them.

Outputs in --out (default benchmarks/results), all written atomically:
accuracy.json, accuracy.md, accuracy_loss_<model>.png; one result per run in
<out>/accuracy-runs/<model>-<precision>.json. A run whose result exists for
the same configuration is not run again unless --force (the full table takes
hours on 2 cores), so an interrupted table resumes where it stopped;
--report-only rewrites the table from finished runs and runs nothing.

    .venv/bin/python benchmarks/accuracy_table.py                      # the full table
    .venv/bin/python benchmarks/accuracy_table.py --train-subset 2000 --test-subset 1000 \\
        --epochs-lenet 1 --epochs-resnet 1 --resnet-train-subset 256 --out /tmp/acc  # smoke run
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
# the engine of `edgetrain compare`: one child process per run (edgetrain/cli/runs.py)
from edgetrain.cli.compare import machine, plot_runs, run_child, share_text  # noqa: E402
from edgetrain.cli.runs import TORCH, write_bytes  # noqa: E402

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # of the 60k training images, pixel/255
MODELS = ("lenet", "resnet18")
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8-mixed")
# the done-when: int8 at most this far (pp) below edgetrain fp32
TARGET_PP = {"lenet": 0.5, "resnet18": 1.0}
# part of every run's configuration: bump it when what a run measures changes, so
# that results kept for resuming are not mixed with ones measured differently
RESULT_VERSION = 2   # 2: training back in train mode after each evaluation


def atomic_write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


# ---------------------------------------------------------------------------
# parent: shared inputs, children, table
def prepare(args, workdir):
    """Normalised data subsets, per-model init .npz and batch order .npz in `workdir`.
    Returns {model: {"data_path", "init_path", "order_path", "init_sha256", "n_train", "n_test"}}."""
    import edgetrain as et
    from edgetrain.data import DataLoader, load_mnist

    x, y = load_mnist(args.data, train=True)
    xt, yt = load_mnist(args.data, train=False)

    def norm(a):  # uint8 (N, 28, 28) -> float32 (N, 1, 28, 28)
        return np.ascontiguousarray(((a.astype(np.float32) / 255.0 - FASHION_MEAN) / FASHION_STD)[:, None])

    out = {}
    for model in args.models:
        ntr = args.resnet_train_subset if model == "resnet18" and args.resnet_train_subset else args.train_subset
        nte = args.resnet_test_subset if model == "resnet18" and args.resnet_test_subset else args.test_subset
        ntr = min(ntr or len(x), len(x))
        nte = min(nte or len(xt), len(xt))
        data_path = os.path.join(workdir, f"data-{ntr}-{nte}.npz")
        if not os.path.exists(data_path):   # the first ntr / nte images of each split
            np.savez(data_path, x=norm(x[:ntr]), y=y[:ntr].astype(np.int64),
                     xt=norm(xt[:nte]), yt=yt[:nte].astype(np.int64))
        et.manual_seed(args.seed)
        m = et.models.lenet() if model == "lenet" else \
            et.models.resnet18(num_classes=10, in_channels=1, small_input=True)
        init = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
        h = hashlib.sha256()
        for k in sorted(init):
            h.update(k.encode())
            h.update(np.ascontiguousarray(init[k]).tobytes())
        init_path = os.path.join(workdir, f"init-{model}.npz")
        np.savez(init_path, **init)
        epochs = args.epochs_lenet if model == "lenet" else args.epochs_resnet
        # the order each epoch's batches come in: an edgetrain DataLoader over the
        # sample indices, seeded (a fresh permutation per epoch, as when training)
        loader = DataLoader((np.arange(ntr),), batch_size=args.batch_size, shuffle=True, seed=args.seed)
        order = np.stack([np.concatenate([np.asarray(b.numpy()) for (b,) in loader]) for _ in range(epochs)])
        order_path = os.path.join(workdir, f"order-{model}.npz")
        np.savez(order_path, order=order.astype(np.int64))
        out[model] = dict(data_path=data_path, init_path=init_path, order_path=order_path,
                          init_sha256=h.hexdigest(), n_train=ntr, n_test=nte, epochs=epochs,
                          order_sha256=hashlib.sha256(order.astype(np.int64).tobytes()).hexdigest())
    return out


def run_config(args, model, prec, inp, runs_dir, workdir):
    """Runs one configuration in a child unless its result exists; returns the result dict."""
    config = {"result_version": RESULT_VERSION, "model": model, "precision": prec, "epochs": inp["epochs"], "batch_size": args.batch_size,
              "eval_batch_size": args.eval_batch_size or args.batch_size,
              "lr": args.lr_lenet if model == "lenet" else args.lr_resnet, "lr_schedule": "linear-to-0",
              "momentum": 0.9, "weight_decay": 0.0, "seed": args.seed, "data": os.path.abspath(args.data),
              "train_subset": inp["n_train"], "test_subset": inp["n_test"],
              "backend": None if prec == TORCH else args.backend, "threads": args.threads,
              "warmup_steps": args.warmup_steps, "init_sha256": inp["init_sha256"],
              "order_sha256": inp["order_sha256"]}
    result_path = os.path.join(runs_dir, f"{model}-{prec}.json")
    if os.path.exists(result_path) and not args.force:
        try:
            with open(result_path) as f:
                old = json.load(f)
            if old.get("config") == config:
                print(f"{model} {prec}: result exists for this configuration, skipped "
                      f"(--force to run it again)", flush=True)
                return old
        except (OSError, ValueError):
            pass  # unreadable: run again
    if args.report_only:
        raise SystemExit(f"accuracy_table: --report-only, and {result_path} has no finished run "
                         f"of this configuration ({model} {prec}; run without --report-only)")
    # the spec of edgetrain/cli/runs.py: the recipe above in its terms
    spec = dict(config, config=config, data_path=inp["data_path"], init_path=inp["init_path"],
                order_path=inp["order_path"], result_path=result_path,
                ckpt_path=os.path.join(runs_dir, f"{model}-{prec}.ckpt"),
                lr_schedule="linear", optimizer="sgd", num_classes=10, train_only=None,
                eval_before=False, progress=True,
                backend=args.backend)     # unused by the PyTorch run, None in its config
    print(f"{model} {prec}: running ({inp['n_train']} train / {inp['n_test']} test, "
          f"{inp['epochs']} epoch(s))", flush=True)
    t0 = time.perf_counter()
    try:
        res = run_child(spec, workdir, args.threads)
    except RuntimeError as e:
        raise RuntimeError(f"accuracy_table: {e}") from None
    try:
        os.unlink(spec["ckpt_path"])   # the run is complete: its checkpoint is spent
    except FileNotFoundError:
        pass
    print(f"{model} {prec}: test acc {res['test_acc']:.4f}, {res['ms_step_median']:.1f} ms/step, "
          f"peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB, {time.perf_counter() - t0:.0f} s", flush=True)
    return res


def _mib(b):
    return f"{b / 2**20:.1f}"


def _name(r):
    return r["framework"] + (" fp32" if r["precision"] == TORCH else f" {r['precision']}")


def write_report(args, mach, inputs, results, out_dir):
    diffs = {}
    for model in args.models:
        rs = {r["precision"]: r for r in results if r["model"] == model}
        base = rs.get("fp32")
        tref = rs.get(TORCH)
        d = {}
        for p, r in rs.items():
            d[p] = {"vs_fp32_pp": None if base is None else 100 * (r["test_acc"] - base["test_acc"]),
                    "vs_torch_pp": None if tref is None else 100 * (r["test_acc"] - tref["test_acc"])}
        if base is not None and "int8" in rs:
            drop = 100 * (base["test_acc"] - rs["int8"]["test_acc"])
            d["int8_drop_pp"] = drop
            d["int8_target_pp"] = TARGET_PP[model]
            d["int8_meets_target"] = drop <= TARGET_PP[model] + 1e-9
        diffs[model] = d
    # per model: is this the configuration (whole data set, 5 / 2 epochs)?
    partial = {m: inputs[m]["n_train"] < 60000 or inputs[m]["n_test"] < 10000 or
               inputs[m]["epochs"] != (5 if m == "lenet" else 2) for m in inputs}
    subset = any(partial.values())
    doc = {"machine": mach, "subset_run": subset, "subset_models": sorted(m for m in partial if partial[m]),
           "recipe": {"optimizer": "SGD", "momentum": 0.9, "weight_decay": 0.0,
                      "lr": {"lenet": args.lr_lenet, "resnet18": args.lr_resnet},
                      "lr_schedule": "linear decay to 0 over the run, per step",
                      "batch_size": args.batch_size, "seed": args.seed,
                      "normalisation": [FASHION_MEAN, FASHION_STD], "data": os.path.abspath(args.data),
                      "evaluation": "in the training precision",
                      "time_per_step": f"median after {args.warmup_steps} warm-up steps; "
                                       "zero_grad+forward+backward+step, batch gathering excluded"},
           "inputs": {m: {k: v for k, v in i.items() if not k.endswith("_path")} for m, i in inputs.items()},
           "differences": diffs, "runs": results}
    atomic_write_json(os.path.join(out_dir, "accuracy.json"), doc)

    lines = ["# Training accuracy by precision: edgetrain vs PyTorch fp32", ""]
    if subset:
        lines += ["**Not all of the issue's configuration:** " + "; ".join(
            f"{m}: " + ("SUBSET, " if partial[m] else "full data set, ") +
            f"{inputs[m]['n_train']} train / {inputs[m]['n_test']} test images, "
            f"{inputs[m]['epochs']} epoch(s)" for m in inputs) + ".", ""]
    lines += [f"Machine: {mach['cpu']} ({' '.join(mach['isa'])}), {mach['cores']} cores; "
              f"{mach['threads']} thread(s) for both frameworks; PyTorch {mach['torch']}; "
              f"Python {mach['python']}; {mach['date']}.", "",
              f"Recipe: Fashion-MNIST ({os.path.abspath(args.data)}), inputs normalised "
              f"(mean {FASHION_MEAN}, std {FASHION_STD}); SGD momentum 0.9, no weight decay, batch "
              f"{args.batch_size}, lr {args.lr_lenet} (lenet) / {args.lr_resnet} (resnet18) decayed "
              f"linearly to 0 per step; seed {args.seed}. Every run of a model starts from the same "
              f"initial weights (edgetrain's init, loaded into the PyTorch reference) and sees the same "
              f"batches in the same order; backend `{args.backend}`. Each model is evaluated in the "
              f"precision it was trained in. Each run is a separate process.", "",
              f"Columns: final test accuracy; its difference in percentage points from edgetrain fp32 "
              f"and from PyTorch fp32; median time per step after {args.warmup_steps} warm-up steps "
              f"(zero_grad + forward + backward + step); peak RSS of the run's process (VmHWM), and "
              f"its peak before training started (libraries and data set loaded); peak bytes of conv/linear activations saved "
              f"for backward (edgetrain: `et.saved_activation_bytes()` after the forward; PyTorch: "
              f"the fp32 inputs of its Conv2d/Linear modules); the share of the machine's CPU time "
              f"that other processes used while the run trained (0 %: it had the machine to itself; "
              f"a step time measured beside other work is not a clean measurement; n/m: a run from "
              f"before this was measured).", ""]
    for model in args.models:
        rs = [r for r in results if r["model"] == model]
        if not rs:
            continue
        inp = inputs[model]
        lines += [f"## {model}" + (" (small_input=True)" if model == "resnet18" else "") +
                  f", {inp['epochs']} epoch(s)", "",
                  "| run | test acc | vs edgetrain fp32 (pp) | vs PyTorch fp32 (pp) | last-epoch train loss "
                  "| ms/step (median) | peak RSS (MiB) | peak RSS before training (MiB) | saved activations (MiB) "
                  "| other processes' CPU (%) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rs:
            d = diffs[model][r["precision"]]
            name = _name(r)

            def pp(v):
                return "-" if v is None else f"{v:+.2f}"

            lines.append(f"| {name} | {r['test_acc']:.4f} | {pp(d['vs_fp32_pp'])} | {pp(d['vs_torch_pp'])} | "
                         f"{r['epochs'][-1]['train_loss']:.4f} | {r['ms_step_median']:.1f} | "
                         f"{_mib(r['peak_rss_bytes'])} | {_mib(r['peak_rss_before_training_bytes'])} | "
                         f"{_mib(r['peak_saved_activation_bytes'])} | {share_text(r.get('other_cpu_share'))} |")
        d = diffs[model]
        if "int8_drop_pp" in d:
            if partial[model]:
                verdict = (f"subset run: the issue's target, at most {d['int8_target_pp']} pp below "
                           f"fp32, is for the full configuration")
            else:
                verdict = ("meets" if d["int8_meets_target"] else "MISSES") + \
                    f" the issue's target: at most {d['int8_target_pp']} pp below fp32"
            lines += ["", f"int8 vs edgetrain fp32: {-d['int8_drop_pp']:+.2f} pp ({verdict})."]
        notes = sorted({w for r in rs for w in r.get("warnings", [])})
        if notes:
            lines += ["", "Backend notes: " + "; ".join(notes)]
        codes = [f"{_name(r)} {', '.join(f'`{c}`' for c in r['code'] if c)}" for r in rs
                 if any(r.get("code") or [])]
        if codes:
            lines += ["", "Code each run trained with (git commit; more than one: resumed): " +
                      "; ".join(codes) + "."]
        # provenance a person added to a kept result (e.g. what shared the machine)
        kept = [(_name(r), n) for r in rs for n in r.get("notes", [])]
        if kept:
            lines += ["", "Notes on the runs:", ""] + [f"- {name}: {n}" for name, n in kept]
        lines += ["", f"![{model} loss curves](accuracy_loss_{model}.png)", ""]
    write_bytes(os.path.join(out_dir, "accuracy.md"), "\n".join(lines).encode())
    for model in args.models:
        rs = [r for r in results if r["model"] == model]
        if rs:
            plot_runs(os.path.join(out_dir, f"accuracy_loss_{model}.png"), model, rs)


def _csv(choices):
    def parse(s):
        items = [t.strip() for t in s.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad)) or 'empty list'}: "
                                             f"choose from {', '.join(choices)}")
        return items
    return parse


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", type=_csv(MODELS), default=list(MODELS), help="comma-separated: lenet,resnet18")
    p.add_argument("--precisions", type=_csv(PRECISIONS), default=list(PRECISIONS),
                   help="edgetrain precisions (PyTorch fp32 always runs too, unless --no-torch)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch fp32 reference runs")
    p.add_argument("--epochs-lenet", type=int, default=5, help="epochs of lenet")
    p.add_argument("--epochs-resnet", type=int, default=2, help="epochs of resnet18")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="default: the training batch size (so evaluation never sets the peak RSS)")
    p.add_argument("--lr-lenet", type=float, default=0.05, help="initial lr of lenet (linear decay to 0)")
    p.add_argument("--lr-resnet", type=float, default=0.05, help="initial lr of resnet18 (linear decay to 0)")
    p.add_argument("--seed", type=int, default=0, help="init weights, batch order, stochastic rounding")
    p.add_argument("--train-subset", type=int, default=None, help="use the first N training images")
    p.add_argument("--test-subset", type=int, default=None, help="use the first N test images")
    p.add_argument("--resnet-train-subset", type=int, default=None,
                   help="resnet18 only: overrides --train-subset")
    p.add_argument("--resnet-test-subset", type=int, default=None,
                   help="resnet18 only: overrides --test-subset")
    p.add_argument("--warmup-steps", type=int, default=10, help="steps left out of the step time")
    p.add_argument("--backend", default="onednn", help="edgetrain backend")
    p.add_argument("--threads", type=int, default=2, help="threads of both frameworks")
    p.add_argument("--data", default=FASHION_DIR, help="directory of Fashion-MNIST IDX files")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder")
    p.add_argument("--force", action="store_true", help="rerun configurations that have a result")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rewrite the table from the finished runs (an error names a "
                        "configuration without one)")
    args = p.parse_args(argv)
    if args.force and args.report_only:
        p.error("--force and --report-only exclude each other")
    for name in ("epochs_lenet", "epochs_resnet", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("train_subset", "test_subset", "resnet_train_subset", "resnet_test_subset", "eval_batch_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not os.path.isdir(args.data):
        p.error(f"--data {args.data!r} is not a directory (Debian's dataset-fashion-mnist: make apt)")

    import edgetrain as et
    if args.backend not in et.backends():
        p.error(f"--backend {args.backend!r} is not available here (have {', '.join(et.backends())})")

    out_dir = os.path.abspath(args.out)
    runs_dir = os.path.join(out_dir, "accuracy-runs")
    os.makedirs(runs_dir, exist_ok=True)
    mach = machine(args.threads)
    configs = [(m, pr) for m in args.models for pr in list(args.precisions) + ([] if args.no_torch else [TORCH])]
    results = []
    with tempfile.TemporaryDirectory(prefix="accuracy-table-") as workdir:
        inputs = prepare(args, workdir)
        for model in args.models:
            i = inputs[model]
            print(f"{model}: {i['n_train']} train / {i['n_test']} test images, {i['epochs']} epoch(s), "
                  f"{-(-i['n_train'] // args.batch_size)} steps per epoch", flush=True)
        for model, prec in configs:
            results.append(run_config(args, model, prec, inputs[model], runs_dir, workdir))
            # the table so far, after every run: an interrupted table still has one
            write_report(args, mach, inputs, results, out_dir)
    print(f"wrote {os.path.join(out_dir, 'accuracy.md')}, accuracy.json and the loss plots")
    for model, d in summary_lines(results, args.models):
        print(f"{model}: {d}")
    return 0


def summary_lines(results, models):
    out = []
    for model in models:
        rs = {r["precision"]: r for r in results if r["model"] == model}
        if "fp32" in rs:
            parts = [f"{p} {100 * (r['test_acc'] - rs['fp32']['test_acc']):+.2f} pp"
                     for p, r in rs.items() if p != "fp32"]
            out.append((model, f"fp32 {rs['fp32']['test_acc']:.4f}; " + ", ".join(parts)))
    return out


if __name__ == "__main__":
    sys.exit(main())
