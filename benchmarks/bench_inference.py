"""Inference grid: edgetrain (fp32 / bf16 / int8) vs PyTorch eager fp32 and ONNX Runtime.

The grid of the inference papers in ../shared/seeds (002: Hadidi et al., edge
devices; 004: Ulker et al., "Reviewing inference performance of state-of-the-art
deep learning frameworks"): latency and throughput over batch sizes in powers
of two, several CNNs, several precisions, the same model in every framework,
warm-up excluded. Here:

  models      lenet 1x28x28, resnet18_small (small_input=True, 10 classes) 3x32x32,
              resnet18 / resnet50 / mobilenet_v2 3x224x224 (1000 classes)
  batches     1, 2, 4, ... 256 (lenet, resnet18_small); the 224x224 models up to
              --max-batch (default 32: a resnet50 forward at batch 256 is ~2.1 TFLOP,
              ~0.5 min per run on two cores, times 7 runs times 6 configurations)
  frameworks  pytorch      PyTorch eager fp32, NCHW (torch.inference_mode, eval)
              pytorch-cl   the same in channels-last (the input is converted
                           inside the timed call: every framework gets NCHW)
              onnxruntime  ONNX Runtime fp32, CPUExecutionProvider, the model
                           exported by edgetrain.onnx.export (ORT fuses Conv+BN)
              edgetrain    backend --backend (onednn), each of --precisions, eval
                           mode under et.no_grad() and et.precision(p)

Same model everywhere: the PyTorch twin (edgetrain.models.torch_reference) is
built under torch.manual_seed(0) and its state_dict is loaded into the edgetrain
model; the ONNX graph is exported from that edgetrain model. Every output is
compared with PyTorch fp32's on the same batch (max |diff| / max |ref|, top-1
agreement) and recorded; an fp32 framework that disagrees is an error, not a
figure.

Timing: one process; for each (model, batch) every configuration runs as a
block: --warmup runs (not timed), then --reps timed runs (time.perf_counter
around the call that returns the output); latency = median seconds per batch,
throughput = batch / latency. Blocks, not run-by-run interleaving, because a
framework's idle worker threads keep spinning for a while after its run (ORT's
pool by design, OpenMP's for its spin count) and on two cores that slowed the
next framework's run by ~1.8x when measured (PyTorch right after ONNX Runtime);
inside a block each run follows a run of its own framework, as in the papers.
Thread count: --threads for all (OMP/OpenBLAS/MKL_NUM_THREADS set before any
library loads, torch.set_num_threads, ORT intra_op_num_threads).

Results (each file written atomically, rewritten after every model so a stopped
run keeps what it measured): OUT/inference.json (machine, settings, every timed
run), OUT/inference.md (tables, the target check), OUT/latency_vs_batch.png,
OUT/throughput_vs_latency.png (the papers' Fig. 5 style), OUT/speedup_vs_pytorch.png.

    .venv/bin/python benchmarks/bench_inference.py --quick   # smoke: ~1 min (quiet 2 cores)
    .venv/bin/python benchmarks/bench_inference.py           # the full grid: ~10-15 min
        # (estimate from 1-thread CPU-time probes: ~940 CPU-s at 7 runs per point)
    .venv/bin/python benchmarks/bench_inference.py --models resnet18 --batches 1 \\
        --precisions fp32,int8
    .venv/bin/python benchmarks/bench_inference.py --profile resnet18:int8:1
        # edgetrain's profiler table of one forward configuration (no grid)
    .venv/bin/python benchmarks/bench_inference.py --replot   # md + PNGs from the JSON
"""
import argparse
import io
import json
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# name -> (input shape C, H, W; largest batch of its default sweep; None = --max-batch)
MODELS = {
    "lenet": ((1, 28, 28), 256),
    "resnet18_small": ((3, 32, 32), 256),
    "resnet18": ((3, 224, 224), None),
    "resnet50": ((3, 224, 224), None),
    "mobilenet_v2": ((3, 224, 224), None),
}
FRAMEWORKS = ("pytorch", "pytorch-cl", "onnxruntime", "edgetrain")
QUICK = dict(models="lenet,resnet18_small", batches="1,8,64")
BASELINE = "pytorch-fp32"
# issue 5's inference target: (model, batch, configuration, max latency ratio to PyTorch fp32)
TARGETS = [("resnet18", 1, "edgetrain-int8", 1 / 3)]
MIN_REPS, MIN_WARMUP = 5, 2
BUSY_WARN = 0.25  # warn when other processes used more than this share of all cores' time
FP32_TOL = 1e-3    # max |diff| / max |ref| allowed for an fp32 framework vs PyTorch fp32


# -- arguments ---------------------------------------------------------------------------
def _csv(s):
    return [p.strip() for p in s.split(",") if p.strip()]


def _positive(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def parse_args(argv=None):
    doc = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(description=doc[0], epilog=doc[-1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated, some of {', '.join(MODELS)} (default all)")
    ap.add_argument("--precisions", default="fp32,bf16,int8",
                    help="edgetrain precision policies (fp32, bf16, fp16, int8, int8-mixed)")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                    help=f"comma-separated, some of {', '.join(FRAMEWORKS)} (default all)")
    ap.add_argument("--backend", default="onednn", help="edgetrain backend (default onednn)")
    ap.add_argument("--max-batch", type=_positive, default=32,
                    help="largest batch of the 224x224 models (default 32)")
    ap.add_argument("--batches", default=None,
                    help="comma-separated batch sizes for every model (overrides the sweeps)")
    ap.add_argument("--threads", type=_positive, default=2, help="threads for every framework")
    ap.add_argument("--reps", type=int, default=MIN_REPS,
                    help=f"timed runs per point, median reported (>= {MIN_REPS})")
    ap.add_argument("--warmup", type=int, default=MIN_WARMUP,
                    help=f"untimed runs before them (>= {MIN_WARMUP})")
    ap.add_argument("--ort-spinning", type=int, choices=(0, 1), default=1,
                    help="ONNX Runtime session.intra_op.allow_spinning (1: ORT's default)")
    ap.add_argument("--omp-passive", action="store_true",
                    help="OMP_WAIT_POLICY=PASSIVE for every OpenMP runtime (edgetrain's and "
                         "PyTorch's): idle threads sleep instead of spinning. For a shared "
                         "machine, where spinning threads that are preempted make small "
                         "parallel ops 10-100x slower; leave off on a quiet one")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke check: models {QUICK['models']}, batches {QUICK['batches']}, "
                         "output under OUT/quick unless --out is given")
    ap.add_argument("--out", default=None,
                    help="output folder (default benchmarks/results/inference)")
    ap.add_argument("--replot", action="store_true",
                    help="rewrite OUT/inference.md and the PNGs from OUT/inference.json "
                         "(no measuring)")
    ap.add_argument("--profile", default=None, metavar="MODEL:PRECISION:BATCH",
                    help="instead of the grid: profile edgetrain's forward of one "
                         "configuration (et.profiler) and write its table into OUT")
    args = ap.parse_args(argv)

    if args.quick:
        if args.models == ap.get_default("models"):
            args.models = QUICK["models"]
        if args.batches is None:
            args.batches = QUICK["batches"]
    args.models = _csv(args.models)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        ap.error(f"--models: unknown {unknown or args.models!r}; expected some of {list(MODELS)}")
    args.frameworks = _csv(args.frameworks)
    unknown = [f for f in args.frameworks if f not in FRAMEWORKS]
    if unknown or not args.frameworks:
        ap.error(f"--frameworks: unknown {unknown or args.frameworks!r}; "
                 f"expected some of {list(FRAMEWORKS)}")
    args.precisions = _csv(args.precisions)
    if "edgetrain" in args.frameworks and not args.precisions:
        ap.error("--precisions: empty")
    if args.batches is not None:
        try:
            args.batches = [int(b) for b in _csv(args.batches)]
        except ValueError:
            ap.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
        if not args.batches or min(args.batches) < 1:
            ap.error(f"--batches: expected positive integers, got {args.batches}")
    if args.reps < MIN_REPS:
        ap.error(f"--reps {args.reps}: each timing is the median of at least {MIN_REPS} runs")
    if args.warmup < MIN_WARMUP:
        ap.error(f"--warmup {args.warmup}: at least {MIN_WARMUP} untimed runs first")
    if args.out is None:
        args.out = os.path.join(HERE, "results", "inference")
        if args.quick:
            args.out = os.path.join(args.out, "quick")
    if args.profile is not None:
        parts = args.profile.split(":")
        try:
            model, prec, batch = parts
            batch = int(batch)
        except ValueError:
            ap.error(f"--profile: expected MODEL:PRECISION:BATCH, got {args.profile!r}")
        if model not in MODELS or batch < 1:
            ap.error(f"--profile: bad model {model!r} or batch {batch} "
                     f"(models {list(MODELS)}, batch >= 1)")
        args.profile = (model, prec, batch)
    return args


def batches_for(name, args):
    if args.batches is not None:
        return list(args.batches)
    top = MODELS[name][1] or args.max_batch
    out, b = [], 1
    while b <= top:
        out.append(b)
        b *= 2
    return out


def set_threads(n, passive=False):
    """Before numpy / torch / edgetrain / onnxruntime load: their OpenMP and BLAS
    pools read these once, at load."""
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(n)
    if passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


# -- models ------------------------------------------------------------------------------
def build_pair(name):
    """(edgetrain model, PyTorch twin) in eval mode with the same weights (the
    twin's init under torch.manual_seed(0), copied into edgetrain)."""
    import torch
    import edgetrain as et
    from edgetrain.models import torch_reference as tr

    torch.manual_seed(0)
    if name == "lenet":
        tm, em = tr.TorchLeNet(), et.models.lenet()
    elif name == "resnet18_small":
        tm = tr.torch_resnet("resnet18", num_classes=10, small_input=True)
        em = et.models.resnet18(num_classes=10, small_input=True)
    elif name in ("resnet18", "resnet50"):
        tm, em = tr.torch_resnet(name), getattr(et.models, name)()
    elif name == "mobilenet_v2":
        tm, em = tr.TorchMobileNetV2(), et.models.mobilenet_v2()
    else:
        raise ValueError(f"build_pair: unknown model {name!r}")
    em.load_state_dict(tr.torch_state_numpy(tm))
    return em.eval(), tm.eval()


class Config:
    """One framework x precision: prepare(x) (outside the timing: wraps the batch)
    returns the timed callable, which returns the output as a numpy array."""

    def __init__(self, key, framework, precision, layout, prepare):
        self.key, self.framework, self.precision, self.layout = key, framework, precision, layout
        self.prepare = prepare


def make_configs(name, shape, args, log):
    """The configurations of one model, baseline first; (configs, notes)."""
    import numpy as np
    import torch
    import edgetrain as et

    em, tm = build_pair(name)
    configs, notes = [], {}

    def torch_prep(model, channels_last):
        def prepare(x):
            tx = torch.from_numpy(x)

            def run():
                with torch.inference_mode():
                    xi = tx.contiguous(memory_format=torch.channels_last) if channels_last else tx
                    return model(xi).numpy()
            return run
        return prepare

    # the baseline runs first in every block (the others' outputs are compared with it)
    configs.append(Config(BASELINE, "pytorch", "fp32", "nchw", torch_prep(tm, False)))
    if "pytorch-cl" in args.frameworks:
        import copy
        tm_cl = copy.deepcopy(tm).to(memory_format=torch.channels_last)
        configs.append(Config("pytorch-fp32-cl", "pytorch", "fp32", "channels_last",
                              torch_prep(tm_cl, True)))
    if "onnxruntime" in args.frameworks:
        try:
            import onnxruntime as ort
            buf = io.BytesIO()
            t0 = time.perf_counter()
            et.onnx.export(em, et.from_numpy(np.zeros((1,) + shape, np.float32)), buf)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads     # ORT counts the calling thread
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.add_session_config_entry("session.intra_op.allow_spinning", str(args.ort_spinning))
            sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
            log(f"  onnx export + ORT session: {time.perf_counter() - t0:.1f} s "
                f"({len(buf.getvalue()) / 1e6:.1f} MB)")
            in_name = sess.get_inputs()[0].name

            def ort_prep(x, sess=sess, in_name=in_name):
                feed = {in_name: x}
                return lambda: sess.run(None, feed)[0]
            configs.append(Config("onnxruntime-fp32", "onnxruntime", "fp32", "nchw", ort_prep))
        except Exception as e:  # noqa: BLE001 - recorded, the rest of the grid still runs
            notes["onnxruntime"] = f"skipped: {type(e).__name__}: {e}"
            log(f"  onnxruntime {notes['onnxruntime']}")
    if "edgetrain" in args.frameworks:
        for prec in args.precisions:
            def et_prep(x, prec=prec):
                ex = et.from_numpy(x)

                def run():
                    with et.backend(args.backend), et.precision(prec), et.no_grad():
                        return em(ex).numpy()
                return run
            configs.append(Config(f"edgetrain-{prec}", "edgetrain", prec, "nchw", et_prep))
    if "pytorch" not in args.frameworks:
        notes["pytorch"] = "timed anyway: PyTorch fp32 is the baseline of every ratio"
    return configs, notes


# -- measuring ---------------------------------------------------------------------------
def time_block(run, warmup, reps):
    """Runs `run` warmup times untimed, then reps times timed; (last output, seconds)."""
    out = None
    for _ in range(warmup):
        out = run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return out, times


def compare(out, ref):
    """max |out - ref| / max |ref| and top-1 agreement with the baseline's output."""
    import numpy as np
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape:
        raise RuntimeError(f"output shape {out.shape} != PyTorch's {ref.shape}")
    scale = max(float(np.abs(ref).max()), 1e-30)
    return (float(np.abs(out - ref).max()) / scale,
            float((out.argmax(1) == ref.argmax(1)).mean()))


def quantiles(v):
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], q[2]


def measure_model(name, args, log):
    """Every (batch, configuration) of one model; (rows, notes)."""
    import numpy as np

    shape = MODELS[name][0]
    configs, notes = make_configs(name, shape, args, log)
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches_for(name, args):
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        ref, base_s = None, None
        for c in configs:
            run = c.prepare(x)
            try:
                out, times = time_block(run, args.warmup, args.reps)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: recorded, go on
                log(f"  {name} b{batch} {c.key}: FAILED {type(e).__name__}: {e}")
                rows.append(dict(model=name, batch=batch, config=c.key, framework=c.framework,
                                 precision=c.precision, layout=c.layout,
                                 error=f"{type(e).__name__}: {e}"))
                continue
            lat = statistics.median(times)
            q1, q3 = quantiles(times)
            if c.key == BASELINE:
                ref, base_s = out, lat
            rel_err = top1 = speedup = None
            if ref is not None:           # None: the baseline failed at this batch
                rel_err, top1 = compare(out, ref)
                speedup = base_s / lat
                if c.precision == "fp32" and rel_err > FP32_TOL:
                    raise RuntimeError(
                        f"{name} batch {batch}: {c.key} differs from PyTorch fp32 by "
                        f"{rel_err:.2e} of max|logit| (> {FP32_TOL}): not the same model")
            rows.append(dict(
                model=name, batch=batch, config=c.key, framework=c.framework,
                precision=c.precision, layout=c.layout, latency_s=lat,
                throughput=batch / lat, q1_s=q1, q3_s=q3, min_s=min(times), times_s=times,
                speedup_vs_pytorch_fp32=speedup, rel_err_vs_pytorch_fp32=rel_err,
                top1_agreement=top1))
            vs = (f"x{speedup:5.2f} vs pytorch fp32  (iqr {q1 * 1e3:.2f}-{q3 * 1e3:.2f} ms, "
                  f"err {rel_err:.1e}, top1 {top1:.2f})" if speedup is not None
                  else "(no PyTorch fp32 baseline at this batch)")
            log(f"  {name:14s} b{batch:<4d} {c.key:18s} {lat * 1e3:10.2f} ms  "
                f"{batch / lat:9.1f} img/s  {vs}")
    return rows, notes


def cpu_snapshot():
    """(busy jiffies of all CPUs from /proc/stat, this process's CPU seconds, wall
    seconds), or None where /proc/stat cannot be read."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = v
    t = os.times()
    return (user + nice + system + irq + softirq + steal, t.user + t.system, time.monotonic())


def others_cpu_share(a, b):
    """Share of all cores' time that other processes used between two snapshots:
    (machine busy - our own CPU time) / (wall x cores)."""
    if a is None or b is None or b[2] <= a[2]:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    others = (b[0] - a[0]) / hz - (b[1] - a[1])
    return max(0.0, others / ((b[2] - a[2]) * (os.cpu_count() or 1)))


def check_targets(rows):
    out = []
    for model, batch, key, max_ratio in TARGETS:
        got = {r["config"]: r for r in rows
               if r["model"] == model and r["batch"] == batch and "latency_s" in r}
        entry = dict(model=model, batch=batch, config=key, max_latency_ratio=max_ratio)
        if key in got and BASELINE in got:
            ratio = got[key]["latency_s"] / got[BASELINE]["latency_s"]
            entry.update(latency_s=got[key]["latency_s"],
                         pytorch_fp32_latency_s=got[BASELINE]["latency_s"],
                         latency_ratio=ratio, met=ratio <= max_ratio)
        else:
            entry.update(met=None, why="not measured in this run")
        out.append(entry)
    return out


# -- outputs -----------------------------------------------------------------------------
def write_text(path, text):
    from edgetrain import checkpoint
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def markdown(info):
    m = info["machine"]
    s = info["settings"]
    lines = [
        f"# Inference: edgetrain vs PyTorch {m['torch']} and ONNX Runtime {info['onnxruntime']}",
        "",
        f"Machine: {m['cpu']} ({' '.join(m['isa'])}), {m['cores']} cores, {m['date']}; "
        f"{s['threads']} threads for every framework; latency = median of {s['reps']} timed "
        f"runs after {s['warmup']} untimed warm-up runs, throughput = batch / latency; "
        f"edgetrain backend {s['backend']}, int8 with "
        f"{'7-bit activations (reduce_range)' if s['int8_reduce_range'] else 'full 8-bit ranges'}; "
        f"ONNX Runtime fp32 (CPUExecutionProvider, allow_spinning={s['ort_spinning']}) on the "
        f"graph of edgetrain.onnx.export; pytorch-fp32-cl: channels-last, the NCHW input "
        f"converted inside the timed call. Same weights in every framework; random inputs; "
        f"OMP_WAIT_POLICY {s.get('omp_wait_policy', 'default')}.",
        "",
        f"Batches: powers of two; the 224x224 models up to {s['max_batch']} (--max-batch)"
        + (f"; this run: {s['batches']}" if s["batches"] else "") + ".",
        "",
        "Command: `.venv/bin/python benchmarks/bench_inference.py "
        + " ".join(s["argv"]) + "`",
        "",
    ]
    if info["targets"]:
        lines += ["## Target", ""]
        for t in info["targets"]:
            what = (f"{t['model']} batch {t['batch']}: {t['config']} latency <= "
                    f"{t['max_latency_ratio']:.3g} x PyTorch fp32")
            if t["met"] is None:
                lines.append(f"- {what}: {t['why']}")
            else:
                lines.append(f"- {what}: {t['latency_s'] * 1e3:.2f} ms vs "
                             f"{t['pytorch_fp32_latency_s'] * 1e3:.2f} ms = "
                             f"{t['latency_ratio']:.2f} x: **{'met' if t['met'] else 'not met'}**")
        lines.append("")
    busy = {k: v for k, v in info.get("others_cpu_share", {}).items()
            if v is not None and v > BUSY_WARN}
    if busy:
        lines += ["**Warning: the machine was busy**: other processes used "
                  + ", ".join(f"{100 * v:.0f}% (during {k})" for k, v in busy.items())
                  + f" of its {m['cores']} cores' time, so these figures are slower and noisier "
                  "than on a quiet machine; rerun there before quoting them.", ""]
    for model in info["models"]:
        rows = [r for r in info["rows"] if r["model"] == model]
        keys = list(dict.fromkeys(r["config"] for r in rows))
        batches = sorted({r["batch"] for r in rows})
        by = {(r["batch"], r["config"]): r for r in rows}
        shape = "x".join(map(str, MODELS[model][0]))
        lines += [f"## {model} ({shape})", ""]
        for note in info["notes"].get(model, {}).values():
            lines += [f"Note: {note}", ""]
        for title, cell in (
                ("latency, ms per batch (median)", lambda r: f"{r['latency_s'] * 1e3:.2f}"),
                ("throughput, images/s", lambda r: f"{r['throughput']:.1f}"),
                ("speed-up vs PyTorch fp32 (its latency / this latency)",
                 lambda r: "-" if r["speedup_vs_pytorch_fp32"] is None
                 else f"{r['speedup_vs_pytorch_fp32']:.2f}x")):
            lines += [f"{title}:", "", "| batch | " + " | ".join(keys) + " |",
                      "| ---: |" + " ---: |" * len(keys)]
            for b in batches:
                cells = []
                for k in keys:
                    r = by.get((b, k))
                    cells.append("-" if r is None else ("failed" if "error" in r else cell(r)))
                lines.append(f"| {b} | " + " | ".join(cells) + " |")
            lines.append("")
        errs = [by[(b, k)] for b in batches for k in keys
                if (b, k) in by and by[(b, k)].get("rel_err_vs_pytorch_fp32") is not None]
        if errs:
            worst = {}
            for r in errs:
                w = worst.setdefault(r["config"], [0.0, 1.0])
                w[0] = max(w[0], r["rel_err_vs_pytorch_fp32"])
                w[1] = min(w[1], r["top1_agreement"])
            lines.append("Output vs PyTorch fp32 (worst over batches): " + "; ".join(
                f"{k} {e:.1e} of max|logit|, top-1 agreement {a:.2f}"
                for k, (e, a) in worst.items() if k != BASELINE) + ".")
            lines.append("")
    return "\n".join(lines) + "\n"


STYLE = {  # config -> (colour, line style, marker)
    "pytorch-fp32": ("black", "-", "o"), "pytorch-fp32-cl": ("grey", "--", "o"),
    "onnxruntime-fp32": ("tab:purple", "-", "s"),
    "edgetrain-fp32": ("tab:blue", "-", "^"), "edgetrain-bf16": ("tab:green", "-", "v"),
    "edgetrain-fp16": ("tab:olive", "-", "v"), "edgetrain-int8": ("tab:red", "-", "D"),
    "edgetrain-int8-mixed": ("tab:orange", "-", "D"),
}


def _series(rows, model):
    """config -> [(batch, latency_s, throughput, speed-up)] sorted by batch."""
    out = {}
    for r in rows:
        if r["model"] == model and "latency_s" in r:
            out.setdefault(r["config"], []).append(
                (r["batch"], r["latency_s"], r["throughput"], r["speedup_vs_pytorch_fp32"]))
    return {k: sorted(v) for k, v in out.items()}


def plots(info, out_dir):
    """The three PNGs, one panel per model (object API + Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = [m for m in info["models"] if _series(info["rows"], m)]
    if not models:
        return []
    ncol = min(3, len(models))
    nrow = (len(models) + ncol - 1) // ncol
    written = []

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    plain = FuncFormatter(lambda v, _: f"{v:g}")

    def figure(fname, draw, suptitle):
        # constrained layout: room for the two-line title and the labels, no overlap
        fig = Figure(figsize=(max(7.0, 5.2 * ncol), 4.2 * nrow + 0.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        for ax, model in zip(axes, models):
            draw(ax, model, _series(info["rows"], model))
            ax.grid(alpha=0.3, which="both")
            for axis in (ax.xaxis, ax.yaxis):      # 1, 2, 4 ... / 0.5, 1, 2: not 2^n, 10^n
                axis.set_major_formatter(plain)
            if ax.get_yscale() == "log":
                # label more than the decades when the data span few of them
                lo, hi = ax.get_ylim()
                span = math.log10(hi / lo) if lo > 0 and hi > lo else 3.0
                subs = (1.0, 2.0, 5.0) if span > 1.5 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{model} ({'x'.join(map(str, MODELS[model][0]))})")
        for ax in axes[len(models):]:
            ax.set_visible(False)
        axes[0].legend(fontsize=8)
        fig.suptitle(suptitle, fontsize=10)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        path = os.path.join(out_dir, fname)
        from edgetrain import checkpoint
        checkpoint.atomic_write(path, lambda f: f.write(buf.getvalue()))
        written.append(path)

    m = info["machine"]
    sub = (f"{m['cpu']}, {info['settings']['threads']} threads; median of "
           f"{info['settings']['reps']} runs after warm-up; {m['date'][:10]}")
    if any(v is not None and v > BUSY_WARN for v in info.get("others_cpu_share", {}).values()):
        sub += " - BUSY machine (other processes running): not for quoting"

    def lat(ax, model, ser):
        for k, pts in ser.items():
            c, ls, mk = STYLE.get(k, (None, "-", "x"))
            ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], ls, color=c, marker=mk,
                    ms=4, label=k)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({p[0] for pts in ser.values() for p in pts}))
        ax.set(xlabel="batch size", ylabel="latency (ms per batch)")

    def tput(ax, model, ser):
        # Fig. 5 of Ulker et al.: each curve walks batch 1, 2, 4, ... (left to right)
        for k, pts in ser.items():
            c, ls, mk = STYLE.get(k, (None, "-", "x"))
            ax.plot([p[1] * 1e3 for p in pts], [p[2] for p in pts], ls, color=c, marker=mk,
                    ms=4, label=k)
            if k == BASELINE or k == "edgetrain-int8":
                for b, l, t, _ in pts:
                    ax.annotate(str(b), (l * 1e3, t), textcoords="offset points",
                                xytext=(3, -9 if k == BASELINE else 4), fontsize=7, color=c)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel="latency (ms per batch)", ylabel="throughput (images/s)")

    def speed(ax, model, ser):
        for k, pts in ser.items():
            pts = [p for p in pts if p[3] is not None]
            if k == BASELINE or not pts:
                continue
            c, ls, mk = STYLE.get(k, (None, "-", "x"))
            ax.plot([p[0] for p in pts], [p[3] for p in pts], ls, color=c, marker=mk, ms=4,
                    label=k)
        ax.axhline(1.0, color="black", lw=1, label="PyTorch fp32")
        for tm, tb, tk, r in TARGETS:
            if tm == model:
                ax.plot([tb], [1 / r], "*", color=STYLE.get(tk, ("red",))[0], ms=12, mfc="none",
                        label=f"target {tk} b{tb}: {1 / r:.0f}x")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({p[0] for pts in ser.values() for p in pts}))
        ax.set(xlabel="batch size", ylabel="speed-up vs PyTorch fp32 (x)")

    figure("latency_vs_batch.png", lat, "Inference latency vs batch size\n" + sub)
    figure("throughput_vs_latency.png", tput,
           "Throughput vs latency, batch 1, 2, 4, ... along each curve (labels: batch)\n" + sub)
    figure("speedup_vs_pytorch.png", speed,
           "Speed-up vs PyTorch eager fp32 (NCHW) by framework and precision\n" + sub)
    return written


def write_results(info, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    info["targets"] = check_targets(info["rows"])
    write_text(os.path.join(out_dir, "inference.json"), json.dumps(info, indent=1) + "\n")
    write_text(os.path.join(out_dir, "inference.md"), markdown(info))
    return plots(info, out_dir)


# -- the profile -------------------------------------------------------------------------
def profile(args, log):
    """edgetrain's profiler over --reps forwards of one configuration, after warm-up."""
    import numpy as np
    import edgetrain as et
    from edgetrain.cli.compare import machine

    model, prec, batch = args.profile
    em, _ = build_pair(model)
    x = et.from_numpy(np.random.default_rng(0).standard_normal(
        (batch,) + MODELS[model][0]).astype(np.float32))
    snap = cpu_snapshot()
    with et.backend(args.backend), et.precision(prec), et.no_grad():
        _, times = time_block(lambda: em(x), args.warmup, args.reps)
        with et.profiler.profile() as p:
            for _ in range(args.reps):
                with et.profiler.record_function("forward"):
                    em(x)
    others = others_cpu_share(snap, cpu_snapshot())
    med = statistics.median(times)
    head = (f"edgetrain {model} {prec} batch {batch}, backend {args.backend}, "
            f"{args.threads} threads: median {med * 1e3:.2f} ms unprofiled "
            f"({args.reps} runs after {args.warmup} warm-up); profile of {args.reps} forwards"
            + (f"; other processes used {100 * others:.0f}% of the machine's CPU meanwhile"
               + (" (BUSY: times inflated)" if others > BUSY_WARN else "")
               if others is not None else "") + ":")
    text = head + "\n" + p.table(sort_by="time") + "\n"
    print(text, flush=True)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"profile-{model}-{prec}-b{batch}-t{args.threads}")
    write_text(stem + ".txt", text)
    summary = p.summary()
    summary.update(unprofiled_median_s=med, unprofiled_times_s=times, forwards=args.reps,
                   others_cpu_share=others, threads=args.threads, machine=machine(args.threads),
                   model=model, precision=prec, batch=batch, backend=args.backend)
    write_text(stem + ".json", json.dumps(summary, indent=1) + "\n")
    log(f"wrote {stem}.txt, .json")


# -- main --------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        path = os.path.join(args.out, "inference.json")
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--replot: cannot read {path}: {e}")
        written = write_results(info, args.out)
        print(f"rewrote {args.out}/inference.json, inference.md, "
              + ", ".join(os.path.basename(w) for w in written))
        return
    set_threads(args.threads, args.omp_passive)

    import torch
    import edgetrain as et
    from edgetrain.cli.compare import machine

    torch.set_num_threads(args.threads)
    for p in args.precisions + ([args.profile[1]] if args.profile else []):
        try:
            et.precision(p)                   # ValueError naming a bad policy
        except (ValueError, TypeError) as e:
            raise SystemExit(f"bench_inference: bad precision {p!r}: {e}")
    if args.backend not in et.backends():
        raise SystemExit(f"--backend {args.backend!r}: not built here (have {et.backends()})")

    def log(msg):
        print(msg, flush=True)

    if args.profile is not None:
        return profile(args, log)

    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    info = dict(
        machine=machine(args.threads), onnxruntime=ort_version, models=[], rows=[], notes={},
        settings=dict(threads=args.threads, reps=args.reps, warmup=args.warmup,
                      backend=args.backend, max_batch=args.max_batch, batches=args.batches,
                      precisions=args.precisions, frameworks=args.frameworks,
                      ort_spinning=args.ort_spinning, quick=args.quick,
                      omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
                      int8_reduce_range=et.int8_reduce_range(), argv=sys.argv[1:] if argv is None
                      else list(argv)))
    t_start = time.perf_counter()
    written = []
    for name in args.models:
        log(f"{name} {MODELS[name][0]}, batches {batches_for(name, args)}")
        t0 = time.perf_counter()
        snap = cpu_snapshot()
        rows, notes = measure_model(name, args, log)
        # other processes on the machine make every figure slower and noisier: say so
        others = others_cpu_share(snap, cpu_snapshot())
        info.setdefault("others_cpu_share", {})[name] = others
        if others is not None and others > BUSY_WARN:
            log(f"  warning: other processes used {100 * others:.0f}% of the machine's CPU "
                f"while {name} was measured")
        info["models"].append(name)
        info["rows"] += rows
        if notes:
            info["notes"][name] = notes
        info.setdefault("seconds", {})[name] = time.perf_counter() - t0
        written = write_results(info, args.out)      # after every model: a stop keeps them
        log(f"  {name}: {time.perf_counter() - t0:.0f} s")
    for t in info["targets"]:
        if t["met"] is not None:
            log(f"target {t['model']} b{t['batch']} {t['config']}: latency ratio "
                f"{t['latency_ratio']:.2f} (<= {t['max_latency_ratio']:.3g}): "
                f"{'met' if t['met'] else 'NOT met'}")
    log(f"total {time.perf_counter() - t_start:.0f} s; wrote {args.out}/inference.json, "
        f"inference.md, " + ", ".join(os.path.basename(w) for w in written))


if __name__ == "__main__":
    main()
