"""`edgetrain compare`: the same training in PyTorch fp32 and in edgetrain at one
or more precisions, side by side.

    edgetrain compare --model lenet --data mnist --data-dir ../shared/data/mnist10k \\
                      --precisions fp32,int8 --epochs 2 --out runs/compare

Every run starts from the same weights (edgetrain's init under --seed, or --init)
and sees the same batches in the same order, the order `edgetrain train` draws
with the same --seed; each edgetrain run is the run `edgetrain train` makes with
the same options. PyTorch runs the plain torch.nn twin of the model
(edgetrain.models.torch_reference) with the same optimizer, lr schedule and
frozen parameters (--train-only).

Each run is a child process (edgetrain/cli/runs.py) with the same thread count,
so its peak RSS (VmHWM) is its own and the two frameworks' thread pools never
share a process: the PyTorch child never loads edgetrain's extension, the
edgetrain children never import torch.

Prints a table (accuracy before and after, loss per epoch, median time per step
after warm-up, peak RSS, saved-activation bytes) and writes into --out, each
file atomically: compare.json (everything, with the machine's description),
compare.md (the table), losses.png (every run's loss curve and test accuracy).

`run_child`, `plot_runs` and `machine` (and runs.py) are also the engine of
benchmarks/accuracy_table.py.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

from .runs import TORCH, write_bytes, write_json
from .common import (
    DATASETS, DEFAULT_LR, FASHION_DIR, MODELS, PRECISIONS, UserError, build_model,
    check_input_size, epoch_seed, freeze, load_weights, nonneg_float, nonneg_int, normalization,
    normalize, os_reason, positive_float, positive_int, prepare_out, read_split,
    read_weights,
)

RUNS_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.py")
RESULTS_JSON, RESULTS_MD, LOSSES_PNG = "compare.json", "compare.md", "losses.png"


# -- measurements -------------------------------------------------------------------
def machine(threads):
    """What a reader of a timing needs: CPU, vector ISA, cores, threads, versions."""
    cpu, isa = platform.processor() or "unknown cpu", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    # the vector ISA decides what the engine can do (VNNI int8, BF16)
                    isa = sorted(fl for fl in line.split(":", 1)[1].split()
                                 if fl.startswith(("avx", "amx")) or fl in ("fma", "f16c"))
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version
        torch_version = version("torch")
    except Exception:  # noqa: BLE001 - only a description
        torch_version = "not installed"
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "system": platform.platform(),
            "torch": torch_version, "numpy": np.__version__,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def run_child(spec, workdir, threads):
    """Runs one spec in a child process with `threads` threads; returns its result.
    Raises RuntimeError with the child's last stderr line when it fails."""
    spec_path = os.path.join(workdir, f"spec-{spec['model']}-{spec['precision']}.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ)
    # edgetrain's OpenMP / OpenBLAS read their thread counts when the extension loads
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    errlog = os.path.join(workdir, f"stderr-{spec['model']}-{spec['precision']}.txt")
    # the child's progress goes to our stderr as it comes; a copy is kept for the error
    with open(errlog, "w+") as err:
        proc = subprocess.Popen([sys.executable, RUNS_PY, spec_path], env=env,
                                stderr=subprocess.PIPE)
        for line in iter(proc.stderr.readline, b""):
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
            err.write(line.decode("utf-8", "replace"))
        rc = proc.wait()
        if rc != 0:
            err.seek(0)
            lines = [ln.strip() for ln in err.read().replace("\r", "\n").splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit status {rc}"
            raise RuntimeError(f"the {spec['model']} {spec['precision']} run failed: {last}")
    with open(spec["result_path"]) as f:
        return json.load(f)


# -- the plot -------------------------------------------------------------------------
def plot_runs(path, title, runs, label=lambda r: r["precision"]):
    """PNG: per-step training loss (running mean) of every run, and test accuracy per
    epoch (epoch 0: before training, when measured). Object API + Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2)
    w = 1
    for r in runs:
        loss = np.asarray(r["step_losses"], dtype=np.float64)
        w = max(1, len(loss) // 50)   # running mean over ~2% of the run: readable curves
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ls = "--" if r["precision"] == TORCH else "-"
        ax.plot(np.arange(w - 1, len(loss)) + 1, smooth, ls, lw=1.2, label=label(r))
        pts = ([(0, r["before"]["test_acc"])] if r.get("before") else []) + \
            [(e["epoch"], e["test_acc"]) for e in r["epochs"]]
        ax2.plot([p[0] for p in pts], [100 * p[1] for p in pts], ls + "o", ms=3, label=label(r))
    ax.set_yscale("log")
    ax.set(xlabel="step", title=f"{title}: training loss",
           ylabel="train loss" + (f" (running mean of {w} steps)" if w > 1 else ""))
    n_ep = max(len(r["epochs"]) for r in runs)
    lo = 0 if any(r.get("before") for r in runs) else 1
    ax2.set_xticks(range(lo, n_ep + 1))
    ax2.set_xlim(lo - 0.5, n_ep + 0.5)
    ax2.set(xlabel="epoch" + (" (0: before training)" if lo == 0 else ""),
            ylabel="test accuracy (%)", title=f"{title}: test accuracy")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(path, buf.getvalue())


# -- the command ----------------------------------------------------------------------
def share_text(v):
    """A run's other_cpu_share as a table cell: percent, or n/m (not measured: a
    result kept from before it was recorded, or not Linux)."""
    return "n/m" if v is None else f"{100 * v:.0f}"


def _run_label(r):
    return "pytorch fp32" if r["precision"] == TORCH else f"edgetrain {r['precision']}"


def _table(results, with_before):
    """Markdown table rows (a header, a rule, one row per run)."""
    ref = next((r for r in results if r["precision"] == TORCH), None)
    head = ["run"] + (["acc before"] if with_before else []) + [
        "final acc", "vs pytorch (pp)", "train loss per epoch", "test loss",
        "ms/step (median)", "vs pytorch", "peak RSS (MiB)", "saved activations (MiB)",
        "other processes' CPU (%)"]
    rows = [head, ["---"] * len(head)]
    for r in results:
        vs_pp = "-" if ref is None or r is ref else f"{100 * (r['test_acc'] - ref['test_acc']):+.2f}"
        ratio = "-" if ref is None or r is ref else \
            f"{r['ms_step_median'] / ref['ms_step_median']:.2f}x"
        row = [_run_label(r)]
        if with_before:
            row.append(f"{r['before']['test_acc']:.4f}" if r.get("before") else "-")
        row += [f"{r['test_acc']:.4f}", vs_pp,
                " ".join(f"{e['train_loss']:.4f}" for e in r["epochs"]),
                f"{r['test_loss']:.4f}", f"{r['ms_step_median']:.2f}", ratio,
                f"{r['peak_rss_bytes'] / 2**20:.0f}",
                f"{r['peak_saved_activation_bytes'] / 2**20:.2f}",
                # a step time measured beside other work is not a clean measurement
                share_text(r.get("other_cpu_share"))]
        rows.append(row)
    return rows


def _print_table(rows):
    """Plain text, columns aligned (the rule row of the markdown is dropped)."""
    body = [rows[0]] + rows[2:]
    widths = [max(len(r[i]) for r in body) for i in range(len(rows[0]))]
    for k, r in enumerate(body):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def cmd_compare(args):
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise UserError(f"--precisions {args.precisions!r}: unknown {', '.join(bad) or 'empty list'}"
                        f" (choose from {', '.join(PRECISIONS)})")
    precisions = list(dict.fromkeys(precisions))             # once each, in the given order
    if not args.no_torch:
        try:
            import importlib.util
            have_torch = importlib.util.find_spec("torch") is not None
        except (ImportError, ValueError):
            have_torch = False
        if not have_torch:
            raise UserError("compare runs PyTorch fp32 as the reference, and torch is not "
                            "installed (pip install torch), or pass --no-torch")
    import edgetrain as et

    backend = args.backend or et.get_backend()
    if backend not in et.backends():
        raise UserError(f"--backend {backend}: not available here (available: "
                        f"{', '.join(et.backends())})")
    optimizer = args.optimizer
    lr = args.lr if args.lr is not None else DEFAULT_LR[optimizer]

    # data: the first N images of each split, normalised as `edgetrain train` does
    x_img, y = read_split(args.data, args.data_dir, train=True)
    xt_img, yt = read_split(args.data, args.data_dir, train=False)
    norm = normalization(args.data, x_img)
    check_input_size(args.model, x_img)
    num_classes = int(max(10, y.max() + 1, yt.max() + 1))
    if args.train_subset:
        x_img, y = x_img[:args.train_subset], y[:args.train_subset]
    if args.test_subset:
        xt_img, yt = xt_img[:args.test_subset], yt[:args.test_subset]

    # init: edgetrain's under --seed, or --init (checked against the model here, once)
    et.set_backend(backend)
    et.manual_seed(args.seed)
    model = build_model(args.model, num_classes)
    if args.init:
        state, _ = read_weights(args.init, args.model, "--init")
        load_weights(model, state, args.init, "--init")
    freeze(model, args.train_only)                  # checks the prefixes name parameters
    init = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}

    out = args.out
    prepare_out(out)
    n = len(y)
    order = np.stack([np.concatenate([np.asarray(b.numpy()) for (b,) in et.data.DataLoader(
        (np.arange(n),), batch_size=args.batch_size, shuffle=True,
        seed=epoch_seed(args.seed, e))]) for e in range(args.epochs)]).astype(np.int64)
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count()
    recipe = {"model": args.model, "data": args.data, "data_dir": args.data_dir,
              "n_train": n, "n_test": len(yt), "num_classes": num_classes,
              "normalization": list(norm), "epochs": args.epochs,
              "batch_size": args.batch_size, "optimizer": optimizer, "lr": lr,
              "lr_schedule": args.lr_schedule, "momentum": args.momentum,
              "weight_decay": args.weight_decay, "seed": args.seed, "init": args.init,
              "train_only": args.train_only, "backend": backend, "threads": threads,
              "warmup_steps": args.warmup_steps}
    print(f"compare {args.model} on {args.data}: {n} train / {len(yt)} test images, "
          f"{args.epochs} epoch(s), batch {args.batch_size}, {optimizer} lr {lr} "
          f"({args.lr_schedule}), seed {args.seed}"
          + (f", init {args.init}" if args.init else "")
          + (f", training only {args.train_only}" if args.train_only else "")
          + f"; {threads} thread(s), edgetrain backend {backend}", flush=True)

    labels = ([] if args.no_torch else [TORCH]) + precisions
    results = []
    with tempfile.TemporaryDirectory(prefix="edgetrain-compare-") as work:
        data_path, init_path, order_path = (os.path.join(work, f) for f in
                                            ("data.npz", "init.npz", "order.npz"))
        np.savez(data_path, x=normalize(x_img, norm), y=y, xt=normalize(xt_img, norm), yt=yt)
        np.savez(init_path, **init)
        np.savez(order_path, order=order)
        for p in labels:
            spec = dict(recipe, precision=p, eval_batch_size=max(args.batch_size, 500),
                        eval_before=bool(args.init), progress=not args.no_progress,
                        data_path=data_path, init_path=init_path, order_path=order_path,
                        result_path=os.path.join(work, f"result-{p}.json"))
            print(f"{_run_label({'precision': p})}: training", flush=True)
            try:
                results.append(run_child(spec, work, threads))
            except RuntimeError as e:
                raise UserError(str(e)) from None
            r = results[-1]
            print(f"{_run_label(r)}: test accuracy {r['test_acc']:.4f}, "
                  f"{r['ms_step_median']:.2f} ms/step, {r['run_s']:.1f} s", flush=True)

    mach = machine(threads)
    rows = _table(results, bool(args.init))
    print()
    _print_table(rows)
    doc = {"machine": mach, "recipe": recipe, "runs": results}
    md = [f"# edgetrain compare: {args.model} on {args.data}", "",
          f"Machine: {mach['cpu']} ({' '.join(mach['isa'])}), {mach['cores']} cores, "
          f"{threads} thread(s) for each framework; PyTorch {mach['torch']}; {mach['date']}.", "",
          f"Recipe: {json.dumps(recipe)}", "",
          "Same initial weights and batch order in every run; time per step is the median "
          f"after {args.warmup_steps} warm-up steps (zero_grad + forward + backward + step); "
          "peak RSS is each run's own process (VmHWM); other processes' CPU is the share of "
          "the machine's CPU time other processes used while the run trained (a step time "
          "measured beside other work is not a clean measurement).", ""]
    md += ["| " + " | ".join(r) + " |" for r in rows] + ["", f"![loss curves]({LOSSES_PNG})", ""]
    try:
        write_json(os.path.join(out, RESULTS_JSON), doc)
        write_bytes(os.path.join(out, RESULTS_MD), "\n".join(md).encode())
        try:
            plot_runs(os.path.join(out, LOSSES_PNG), args.model, results, _run_label)
        except ImportError:
            print(f"note: matplotlib is not installed; {LOSSES_PNG} not written",
                  file=sys.stderr)
    except OSError as e:
        raise UserError(f"cannot write into --out {out}: {os_reason(e)}") from None
    print(f"\nwrote {os.path.join(out, RESULTS_MD)}, {RESULTS_JSON}, {LOSSES_PNG}")
    return 0


def add_parser(sub):
    c = sub.add_parser(
        "compare", help="the same training in PyTorch fp32 and edgetrain, side by side",
        description="Train the same model with the same recipe, initial weights and batch "
                    "order in PyTorch fp32 and in edgetrain at each --precisions, each in its "
                    "own process with the same thread count. Prints a table (accuracy, loss "
                    "per epoch, time per step, peak RSS) and writes OUT/compare.md, "
                    "OUT/compare.json and OUT/losses.png.")
    c.add_argument("--model", choices=MODELS, default="lenet", help="network (default lenet)")
    c.add_argument("--data", choices=DATASETS, default="fashion-mnist",
                   help=f"data set (default fashion-mnist, read from {FASHION_DIR})")
    c.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory of the IDX files; needed for mnist and idx")
    c.add_argument("--precisions", default="fp32,int8", metavar="LIST",
                   help=f"comma-separated edgetrain precisions: {', '.join(PRECISIONS)} "
                        "(default fp32,int8)")
    c.add_argument("--no-torch", action="store_true", help="skip the PyTorch fp32 run")
    c.add_argument("--backend", default=None, help="edgetrain backend (default: the current)")
    c.add_argument("--threads", type=positive_int, default=None,
                   help="threads of both frameworks (default: OMP_NUM_THREADS, else all cores)")
    c.add_argument("--epochs", type=positive_int, default=1, help="epochs (default 1)")
    c.add_argument("--batch-size", type=positive_int, default=64,
                   help="mini-batch size (default 64)")
    c.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default 0.05 for sgd, 0.001 for adam)")
    c.add_argument("--lr-schedule", choices=("constant", "linear"), default="linear",
                   help="linear decay to 0 over the run (default), or constant")
    c.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="optimizer (default sgd)")
    c.add_argument("--momentum", type=nonneg_float, default=0.9,
                   help="SGD momentum (default 0.9)")
    c.add_argument("--weight-decay", type=nonneg_float, default=0.0,
                   help="L2 weight decay (default 0)")
    c.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of the initial weights and batch order (default 0)")
    c.add_argument("--init", default=None, metavar="FILE",
                   help="initial weights: an edgetrain checkpoint or a torch.save'd state_dict;"
                        " the accuracy before training is reported too")
    c.add_argument("--train-only", default=None, metavar="PREFIXES",
                   help="comma-separated parameter-name prefixes trained; the others frozen "
                        "(in both frameworks)")
    c.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images only")
    c.add_argument("--test-subset", type=positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images only")
    c.add_argument("--warmup-steps", type=nonneg_int, default=5,
                   help="steps left out of the time per step (default 5)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.add_argument("--out", required=True, metavar="DIR",
                   help="where compare.md, compare.json and losses.png go")
    c.set_defaults(func=cmd_compare)
    return c

