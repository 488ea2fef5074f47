"""Training-step grid: edgetrain (backend x precision) vs PyTorch eager fp32.

Issue 5's grid: lenet 28x28 b128, resnet18(small_input) 32x32 b128, resnet18
224x224 b32, resnet50 224x224 b16, mobilenet_v2 224x224 b32; edgetrain at
fp32 / bf16 / int8 / int8-mixed on each backend, PyTorch eager fp32 in nchw
and in channels-last. Same machine, same run, same thread count, same
initial weights (the PyTorch model's) and the same random batch; SGD with
momentum, cross-entropy. Each configuration runs in its own process
(benchmarks/train_step_child.py), so its peak RSS (VmHWM) is its own; each
figure is the median of the measured steps after the warm-up steps.

The ref and blas backends run only the small models by default: ref is the
integer-exact scalar reference (minutes per 224x224 step) and blas runs its
int8 on ref (no integer gemm in OpenBLAS); see --backend-models.

Results: OUT/train_step.{json,md} (written atomically) with the machine's
description, the targets of issue 5 checked against the measured ratios.

    .venv/bin/python benchmarks/bench_train_step.py            # the whole grid (~30 min)
    .venv/bin/python benchmarks/bench_train_step.py --models lenet,resnet18_small \\
        --precisions fp32,int8 --backends onednn               # a subset
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from edgetrain.cli.compare import machine  # noqa: E402 - one machine description
from edgetrain.cli.runs import write_bytes, write_json  # noqa: E402 - one atomic write

CHILD = os.path.join(HERE, "train_step_child.py")
# name, input shape (C, H, W), batch, measured steps
CASES = [
    ("lenet", (1, 28, 28), 128, 20),
    ("resnet18_small", (3, 32, 32), 128, 5),
    ("resnet18", (3, 224, 224), 32, 5),
    ("resnet50", (3, 224, 224), 16, 5),
    ("mobilenet_v2", (3, 224, 224), 32, 5),
]
PRECISIONS = ("fp32", "bf16", "int8", "int8-mixed")
BACKEND_MODELS = "onednn=all;blas=lenet,resnet18_small;ref=lenet"
# issue 5's targets on the training step: (model, precision, min speed-up vs PyTorch fp32)
TARGETS = [("resnet18", "int8", 3.0), ("resnet18", "fp32", 1.1),
           ("lenet", "int8", 2.0), ("resnet18_small", "int8", 2.0)]
RSS_TARGET = ("resnet18", "int8", 0.6)   # peak RSS <= 0.6x PyTorch fp32's


def parse_backend_models(s):
    out = {}
    for part in s.split(";"):
        if not part.strip():
            continue
        b, _, ms = part.partition("=")
        out[b.strip()] = None if ms.strip() == "all" else {m.strip() for m in ms.split(",")}
    return out


def run_child(spec, workdir):
    """One configuration in a child process; returns its result dict.
    Raises RuntimeError with the child's last stderr line when it fails."""
    tag = f"{spec['model']}-{spec['framework']}-{spec.get('backend', '')}-{spec.get('precision', '')}" \
          f"{'-cl' if spec.get('channels_last') else ''}"
    spec = dict(spec, result_path=os.path.join(workdir, f"result-{tag}.json"))
    path = os.path.join(workdir, f"spec-{tag}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ)
    # edgetrain's OpenMP / OpenBLAS read their thread counts when the extension loads
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(spec["threads"])
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, CHILD, path], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise RuntimeError(f"{tag}: the child failed: {lines[-1] if lines else proc.returncode}")
    with open(spec["result_path"]) as f:
        return json.load(f)


def label(r):
    if r["framework"] == "pytorch":
        return "PyTorch fp32" + (" channels-last" if r["channels_last"] else "")
    return f"edgetrain {r['backend']} {r['precision']}"


def report(info, rows, argv):
    """The markdown report: one table per model, then the targets."""
    m = info["machine"]
    lines = [f"# Training step: edgetrain vs PyTorch {m['torch']} eager fp32", "",
             f"Machine: {m['cpu']} ({' '.join(m['isa'])}), {m['cores']} cores, {m['system']}; "
             f"{info['threads']} threads for both frameworks; {info['date']}.",
             f"Median of the measured steps after {info['warmup']} warm-up steps; each "
             "configuration in its own process (peak RSS = its VmHWM); SGD momentum 0.9, "
             "cross-entropy, one random batch, the same initial weights everywhere.", "",
             "Command: `.venv/bin/python benchmarks/bench_train_step.py " + " ".join(argv) + "`", ""]
    for name, shape, batch, _ in CASES:
        mr = [r for r in rows if r["model"] == name]
        if not mr:
            continue
        lines += [f"## {name} {shape[1]}x{shape[2]}, batch {batch}", "",
                  "| run | median step (ms) | images/s | speed-up vs PyTorch fp32 | vs edgetrain fp32 "
                  "(same backend) | peak RSS (MiB) | RSS vs PyTorch | saved activations (MiB) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in mr:
            if "error" in r:
                lines.append(f"| {label(r)} | failed: {r['error']} | | | | | | |")
                continue
            vs = f"{r['vs_fp32']:.2f}x" if r.get("vs_fp32") else "-"
            sab = r.get("saved_activation_bytes")
            lines.append(
                f"| {label(r)} | {r['median_s'] * 1e3:.1f} | {batch / r['median_s']:.1f} | "
                f"{r['speedup']:.2f}x | {vs} | {r['peak_rss_bytes'] / 2**20:.0f} | "
                f"{r['rss_ratio']:.2f}x | {'-' if sab is None else f'{sab / 2**20:.1f}'} |")
        lines.append("")
    lines += ["## Issue 5 targets (edgetrain onednn vs PyTorch eager fp32, same run)", "",
              "| target | measured | holds |", "| --- | --- | --- |"]
    for t in info["targets"]:
        lines.append(f"| {t['what']} | {t['measured']} | {'yes' if t['holds'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def check_targets(rows):
    def find(model, prec):
        for r in rows:
            if (r["model"], r["framework"], r.get("backend"), r.get("precision")) == \
                    (model, "edgetrain", "onednn", prec) and "error" not in r:
                return r
        return None
    out = []
    for model, prec, want in TARGETS:
        r = find(model, prec)
        if r:
            out.append({"what": f"{model} b{r['batch']} {prec} step >= {want}x PyTorch fp32",
                        "measured": f"{r['speedup']:.2f}x", "holds": r["speedup"] >= want})
    model, prec, want = RSS_TARGET
    r = find(model, prec)
    if r:
        out.append({"what": f"{model} b{r['batch']} {prec} peak RSS <= {want}x PyTorch fp32's",
                    "measured": f"{r['rss_ratio']:.2f}x", "holds": r["rss_ratio"] <= want})
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(c[0] for c in CASES))
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="edgetrain policies (fp32, bf16, fp16, int8, int8-mixed)")
    ap.add_argument("--backends", default="onednn,blas,ref")
    ap.add_argument("--backend-models", default=BACKEND_MODELS,
                    help="which models each backend runs: 'onednn=all;blas=lenet,resnet18_small'")
    ap.add_argument("--no-channels-last", action="store_true", help="skip PyTorch channels-last")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="measured steps (default: per model, >= 5)")
    ap.add_argument("--profile", action="store_true",
                    help="profile one extra onednn step per edgetrain run (after the timing)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    models = args.models.split(",")
    unknown = sorted(set(models) - {c[0] for c in CASES})
    if unknown:
        ap.error(f"unknown model(s) {unknown}: expected some of {[c[0] for c in CASES]}")
    bad = sorted(set(args.precisions.split(",")) - {"fp32", "bf16", "fp16", "int8", "int8-mixed"})
    if bad:
        ap.error(f"unknown precision(s) {bad}")
    bmodels = parse_backend_models(args.backend_models)
    rows = []
    with tempfile.TemporaryDirectory(prefix="et-bench-") as work:
        for name, shape, batch, steps in CASES:
            if name not in models:
                continue
            base = dict(model=name, shape=list(shape), batch=batch, threads=args.threads,
                        warmup=args.warmup, steps=args.steps or steps, seed=args.seed,
                        weights=os.path.join(work, f"weights-{name}.npz"))
            configs = [dict(base, framework="pytorch", channels_last=False)]
            if not args.no_channels_last:
                configs.append(dict(base, framework="pytorch", channels_last=True))
            for b in args.backends.split(","):
                if b in bmodels and bmodels[b] is not None and name not in bmodels[b]:
                    continue
                for prec in args.precisions.split(","):
                    configs.append(dict(base, framework="edgetrain", backend=b, precision=prec,
                                        profile=args.profile and b == "onednn"))
            torch_s = torch_rss = None
            fp32 = {}
            for spec in configs:
                r = {k: spec.get(k) for k in ("model", "batch", "framework", "channels_last",
                                               "backend", "precision")}
                try:
                    res = run_child(spec, work)
                except RuntimeError as e:
                    r["error"] = str(e)
                    print(f"{name:15s} {label(r):36s} FAILED: {e}", flush=True)
                    rows.append(r)
                    continue
                r.update(res)
                if torch_s is None:
                    torch_s, torch_rss = r["median_s"], r["peak_rss_bytes"]
                r["speedup"] = torch_s / r["median_s"]
                r["rss_ratio"] = r["peak_rss_bytes"] / torch_rss
                if r["framework"] == "edgetrain":
                    if r["precision"] == "fp32":
                        fp32[r["backend"]] = r["median_s"]
                    elif r["backend"] in fp32:
                        r["vs_fp32"] = fp32[r["backend"]] / r["median_s"]
                rows.append(r)
                print(f"{name:15s} {label(r):36s} {r['median_s'] * 1e3:9.1f} ms  "
                      f"{r['speedup']:5.2f}x PyTorch  RSS {r['peak_rss_bytes'] / 2**20:6.0f} MiB "
                      f"({r['rss_ratio']:.2f}x)", flush=True)
    info = dict(machine=machine(args.threads), threads=args.threads, warmup=args.warmup,
                date=machine(args.threads)["date"], argv=argv, rows=rows)
    info["targets"] = check_targets(rows)
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "train_step.json"), info)
    write_bytes(os.path.join(args.out, "train_step.md"), report(info, rows, argv).encode())
    print(f"wrote {args.out}/train_step.{{json,md}}")
    for t in info["targets"]:
        print(f"target: {t['what']}: {t['measured']} ({'holds' if t['holds'] else 'does NOT hold'})")


if __name__ == "__main__":
    main()
