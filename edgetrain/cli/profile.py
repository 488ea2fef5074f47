"""`edgetrain profile`: where a training step's time goes, CPU and accelerator.

    edgetrain profile --model resnet18 --small-input --precision int8 --batch-size 32 \\
                      --steps 5 --warmup 2 --out runs/prof-r18-int8

Synthetic data (standard-normal images, uniform labels: no data set needed).
--warmup steps run unprofiled (the first builds the backend's primitives),
then --steps training steps (zero_grad + forward + cross-entropy + backward +
SGD step) run under et.profiler.profile(), each in a "train_step" range.
Prints the table (et.profiler's rows, sorted by time) and writes into --out,
each file atomically:
    trace.json    Chrome trace (open in ui.perfetto.dev or chrome://tracing):
                  the Python thread and the accelerator (the queue's worker)
                  as separate tracks, an arrow from each op to the jobs it
                  submitted
    profile.png   time per op category and pass, CPU vs accelerator
    profile.json  the options, the step times, the profile's totals and rows

Models: every builder in et.models (lenet takes 1x28x28 images; the resnets
3x224x224, or with --small-input their 3x3 stem at 3x32x32; --input-size
overrides the size).
"""
from __future__ import annotations

import inspect
import json
import os
import time

import numpy as np

import edgetrain as et
from .common import PRECISIONS, UserError, nonneg_int, positive_int, prepare_out, write_out

TRACE, PNG, JSON = "trace.json", "profile.png", "profile.json"


def model_names():
    """The model builders et.models offers (lower-case callables of its __all__)."""
    names = getattr(et.models, "__all__", None) or dir(et.models)
    return sorted(n for n in names
                  if n[:1].islower() and callable(getattr(et.models, n, None)))


def build(name, num_classes, in_channels, small_input):
    """The model, passing only the options its builder takes."""
    builder = getattr(et.models, name)
    params = inspect.signature(builder).parameters
    kw = {"num_classes": num_classes}
    if "in_channels" in params:
        kw["in_channels"] = in_channels
    elif in_channels != 3:
        raise UserError(f"--model {name} has no in_channels option (its input has 3 channels)")
    if small_input:
        if "small_input" not in params:
            raise UserError(f"--small-input: --model {name} has no small-input variant")
        kw["small_input"] = True
    try:
        return builder(**kw)
    except (TypeError, ValueError) as e:
        raise UserError(f"--model {name}: cannot build it: {e}") from None


def input_shape(args):
    """(C, H, W) of the synthetic images."""
    if args.model == "lenet":
        c, hw = 1, (28, 28)
    else:
        c, hw = 3, ((32, 32) if args.small_input else (224, 224))
    if args.in_channels is not None:
        c = args.in_channels
    if args.input_size is not None:
        hw = tuple(args.input_size)
    if args.model == "lenet" and hw != (28, 28):
        raise UserError(f"--input-size {hw[0]} {hw[1]}: lenet takes 28x28 images")
    return (c,) + hw


def cmd_profile(args):
    names = model_names()
    if args.model not in names:
        raise UserError(f"--model {args.model}: not in et.models (available: "
                        f"{', '.join(names)})")
    backend = args.backend or et.get_backend()
    if backend not in et.backends():
        raise UserError(f"--backend {backend}: not available here (available: "
                        f"{', '.join(et.backends())})")
    shape = input_shape(args)
    prepare_out(args.out)
    et.set_backend(backend)
    et.manual_seed(args.seed)
    model = build(args.model, args.num_classes, shape[0], args.small_input)
    model.set_precision(args.precision)
    model.train()
    opt = et.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = et.nn.CrossEntropyLoss()
    rng = np.random.default_rng(args.seed)
    x = et.from_numpy(rng.standard_normal((args.batch_size,) + shape).astype(np.float32))
    y = et.tensor(rng.integers(0, args.num_classes, args.batch_size).astype(np.int64))
    rf = et.profiler.record_function

    def step():
        t0 = time.perf_counter()
        with rf("train_step"):
            opt.zero_grad()
            with rf("forward"):
                loss = crit(model(x), y)
            with rf("backward"):
                loss.backward()
            opt.step()
        return time.perf_counter() - t0, float(loss.item())

    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model} ({n_params} parameters), input {args.batch_size}x"
          f"{'x'.join(map(str, shape))}, precision {args.precision}, backend {backend}: "
          f"{args.warmup} warm-up step(s), then {args.steps} profiled step(s)", flush=True)
    warm = [step()[0] for _ in range(args.warmup)]
    with et.profiler.profile(max_records=args.max_records) as prof:
        timed = [step() for _ in range(args.steps)]
    step_s = [t for t, _ in timed]
    if not all(np.isfinite(l) for _, l in timed):
        print("note: the loss is not finite on these random inputs (the timing stands)")

    title = (f"{args.model} {args.precision} batch {args.batch_size} "
             f"{'x'.join(map(str, shape))} on {backend}, {args.steps} step(s)")
    print(prof.table(sort_by=args.sort_by, row_limit=args.row_limit))
    trace = os.path.join(args.out, TRACE)
    try:
        prof.export_chrome_trace(trace)
    except OSError as e:
        raise UserError(f"cannot write the trace {trace}: {e.strerror or e}") from None
    png = os.path.join(args.out, PNG)
    try:
        prof.save_png(png, title=title)
    except ImportError:
        print(f"note: matplotlib is not installed; {PNG} not written")
        png = None
    except OSError as e:
        raise UserError(f"cannot write {png}: {e.strerror or e}") from None
    report = {
        "model": args.model, "precision": args.precision, "backend": backend,
        "batch_size": args.batch_size, "input_shape": list(shape),
        "small_input": bool(args.small_input), "num_classes": args.num_classes,
        "steps": args.steps, "warmup": args.warmup, "seed": args.seed,
        "warmup_step_seconds": warm, "step_seconds": step_s,
        "median_step_seconds": float(np.median(step_s)) if step_s else None,
        "images_per_second": (args.batch_size / float(np.median(step_s))) if step_s else None,
        "profile": prof.summary(sort_by=args.sort_by),
    }
    data = (json.dumps(report, indent=1) + "\n").encode("utf-8")
    write_out(os.path.join(args.out, JSON), "the profile", lambda f: f.write(data))
    print(f"median step {1e3 * report['median_step_seconds']:.1f} ms "
          f"({report['images_per_second']:.1f} images/s); wrote {trace}"
          + (f", {png}" if png else "") + f", {os.path.join(args.out, JSON)}")
    return 0


def add_parser(sub):
    p = sub.add_parser(
        "profile", help="profile training steps: CPU vs accelerator time per op and pass",
        description="Profile a few training steps of a model on synthetic data: per op and "
                    "pass (conv fwd / bwd_data / bwd_weight, quantize, batchnorm, pooling, "
                    "optimizer, ...) the CPU time, the accelerator time, the time blocked on "
                    "the queue, FLOPs and GFLOP/s, bytes, primitive-cache hits/misses/"
                    f"evictions. Writes --out/{TRACE} (Chrome trace), {PNG} and {JSON}.")
    p.add_argument("--model", required=True, metavar="NAME",
                   help=f"a model of et.models: {', '.join(model_names())}")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="precision of the conv/linear products (default fp32)")
    p.add_argument("--batch-size", type=positive_int, required=True, help="images per step")
    p.add_argument("--input-size", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                   help="image height and width (default: lenet 28 28, resnets 224 224, "
                        "32 32 with --small-input)")
    p.add_argument("--small-input", action="store_true",
                   help="resnets: the 3x3 stem without max-pool (CIFAR-style), 32x32 input")
    p.add_argument("--in-channels", type=positive_int, default=None,
                   help="image channels (default: lenet 1, others 3)")
    p.add_argument("--num-classes", type=positive_int, default=10,
                   help="classifier outputs (default 10)")
    p.add_argument("--backend", default=None,
                   help=f"backend of the heavy products: {', '.join(et.backends())} "
                        f"(default {et.get_backend()})")
    p.add_argument("--steps", type=positive_int, default=5, help="profiled steps (default 5)")
    p.add_argument("--warmup", type=nonneg_int, default=2,
                   help="unprofiled steps first (default 2; the first builds primitives)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of the weights and data (default 0)")
    p.add_argument("--sort-by", default="time",
                   choices=("time", "cpu_total", "cpu_self", "accel", "queue_wait", "flops",
                            "calls", "name"),
                   help="table order (default time: the larger of CPU total and accelerator)")
    p.add_argument("--row-limit", type=positive_int, default=30,
                   help="rows printed (default 30; the JSON has them all)")
    p.add_argument("--max-records", type=positive_int, default=1 << 20,
                   help="bound of the C record buffer (default 1048576); records past it are "
                        "dropped and counted")
    p.add_argument("--out", required=True, metavar="DIR",
                   help=f"directory for {TRACE}, {PNG}, {JSON} (created if needed)")
    p.set_defaults(func=cmd_profile)
    return p
