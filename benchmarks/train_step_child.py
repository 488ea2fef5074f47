"""One training-step timing per process: the child side of bench_train_step.py.

    python benchmarks/train_step_child.py SPEC.json     # writes SPEC["result_path"]

A process per configuration so that each one's peak RSS (VmHWM) is its own:
this file imports neither edgetrain nor torch at module level, a PyTorch child
never loads edgetrain's extension and an edgetrain child never imports torch.

SPEC: model, shape (C, H, W), batch, framework ("pytorch" | "edgetrain"),
channels_last (pytorch), backend and precision (edgetrain), threads, warmup,
steps, seed, weights (an .npz of the PyTorch model's state, written by the
first PyTorch child and loaded by every other child: same weights everywhere).
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# the helpers shared with edgetrain compare's children (peak RSS, atomic write);
# loaded by file for the same reason as torch_reference below
_spec = importlib.util.spec_from_file_location("edgetrain_runs", os.path.join(ROOT, "edgetrain", "cli", "runs.py"))
runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runs)

# model name -> (builder name, keyword arguments); shapes and batches are bench_train_step.py's
MODELS = {
    "lenet": ("lenet", dict(num_classes=10, in_channels=1)),
    "resnet18_small": ("resnet18", dict(num_classes=10, small_input=True)),
    "resnet18": ("resnet18", dict(num_classes=1000)),
    "resnet50": ("resnet50", dict(num_classes=1000)),
    "mobilenet_v2": ("mobilenet_v2", dict(num_classes=1000)),
}


def data(spec):
    """The same random batch in every child: N(0, 1) images, uniform labels."""
    rng = np.random.default_rng(spec["seed"])
    x = rng.standard_normal((spec["batch"], *spec["shape"])).astype(np.float32)
    y = rng.integers(0, MODELS[spec["model"]][1]["num_classes"], spec["batch"]).astype(np.int64)
    return x, y


def time_steps(step, warmup, steps):
    """Seconds of each measured step, after `warmup` unmeasured ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def torch_reference():
    # by file, not `import edgetrain.models...`: that would load edgetrain's extension
    path = os.path.join(ROOT, "edgetrain", "models", "torch_reference.py")
    s = importlib.util.spec_from_file_location("edgetrain_torch_reference", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


def build_torch(name):
    ref = torch_reference()
    builder, kw = MODELS[name]
    if builder == "lenet":
        return ref.TorchLeNet(**kw)
    if builder == "mobilenet_v2":
        return ref.TorchMobileNetV2(**kw)
    return ref.torch_resnet(builder, **kw)


def child_torch(spec):
    import torch
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    model = build_torch(spec["model"])
    if os.path.exists(spec["weights"]):
        model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()})
    else:   # the first PyTorch child draws the weights every other child uses
        state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        tmp = spec["weights"] + f".{os.getpid()}.tmp.npz"
        np.savez(tmp, **state)
        os.replace(tmp, spec["weights"])
    model.train()
    x, y = data(spec)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    if spec.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
        tx = tx.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tx), ty)
        loss.backward()
        opt.step()

    return {"times": time_steps(step, spec["warmup"], spec["steps"])}


def child_edgetrain(spec):
    import edgetrain as et
    builder, kw = MODELS[spec["model"]]
    et.manual_seed(spec["seed"])
    model = getattr(et.models, builder)(**kw)
    model.load_state_dict(dict(np.load(spec["weights"])))
    model.train()
    x, y = data(spec)
    ex, ey = et.from_numpy(x), et.tensor(y, dtype="int64")
    opt = et.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    saved = [0]

    def step():
        opt.zero_grad()
        loss = et.nn.functional.cross_entropy(model(ex), ey)
        saved[0] = max(saved[0], et.saved_activation_bytes())   # held until backward
        loss.backward()
        opt.step()

    with et.backend(spec["backend"]), et.precision(spec["precision"]):
        times = time_steps(step, spec["warmup"], spec["steps"])
        out = {"times": times, "saved_activation_bytes": saved[0]}
        if spec.get("profile"):
            # one more step under the profiler, after the timing: where the time goes
            with et.profiler.profile() as p:
                step()
            summ = p.summary()
            summ.pop("rows")
            out["profile"] = summ
            out["profile_table"] = p.table(row_limit=12)
    return out


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = str(spec["threads"])
    out = child_torch(spec) if spec["framework"] == "pytorch" else child_edgetrain(spec)
    out["median_s"] = statistics.median(out["times"])
    out["peak_rss_bytes"] = runs.peak_rss_bytes()
    runs.write_json(spec["result_path"], out)


if __name__ == "__main__":
    main(sys.argv[1])
