"""One training run per process: the child side of `edgetrain compare` and of
benchmarks/accuracy_table.py.

    python edgetrain/cli/runs.py SPEC.json        # started by compare.run_child

Run as a script, not as `python -m edgetrain...`: this file imports neither
edgetrain nor torch at module level, so the PyTorch child never loads
edgetrain's extension (its peak RSS and its thread pool are PyTorch's alone),
and an edgetrain child never imports torch.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import resource
import sys
import time
import warnings

import numpy as np

TORCH = "torch-fp32"          # the PyTorch run's label where edgetrain runs have a precision
HERE = os.path.dirname(os.path.abspath(__file__))


def peak_rss_bytes():
    """Peak resident set size of this process image (bytes).

    VmHWM from /proc/self/status, not getrusage's ru_maxrss: Linux carries
    ru_maxrss over an execve, so a child started by a data-holding parent would
    report at least the parent's peak. VmHWM belongs to the process's own
    address space, which starts fresh at exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024          # "VmHWM:  123456 kB"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def write_bytes(path, data):
    """Atomically: temporary file, fsync, rename (edgetrain.checkpoint.atomic_write's
    rule; that module is not imported here, see the module docstring)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


# -- children: one training run each --------------------------------------------------
# A spec (JSON) says everything a child needs:
#   model, num_classes, precision (an edgetrain preset, or TORCH), backend, threads,
#   seed, optimizer, lr, lr_schedule ("linear" | "constant"), momentum, weight_decay,
#   epochs, batch_size, eval_batch_size, train_only, eval_before, warmup_steps,
#   data_path (.npz: x, y, xt, yt normalised), init_path (.npz state_dict),
#   order_path (.npz: order (epochs, n_train) sample indices), result_path,
#   optional ckpt_path + config (epoch checkpoints of long runs, see train_loop).
def _load_inputs(spec):
    d = np.load(spec["data_path"])
    order = np.load(spec["order_path"])["order"]          # (epochs, n_train) int64
    return d["x"], d["y"], d["xt"], d["yt"], order, dict(np.load(spec["init_path"]))


def _lr_at(spec, step, total):
    if spec["lr_schedule"] == "constant":
        return spec["lr"]
    return spec["lr"] * (1.0 - step / total)          # linear decay to 0, per step


def _lr_setter(opt):
    """set_lr(v) for train_loop: edgetrain's and torch's optimizers share param_groups."""
    def set_lr(v):
        for g in opt.param_groups:
            g["lr"] = v
    return set_lr


def cpu_counters():
    """(busy ticks of the whole machine, total ticks, this process's ticks), or None
    off Linux. Their differences over an interval give the share of the machine's
    CPU time that OTHER processes used meanwhile: a step time measured while that
    share is high is not a clean measurement (other work had the cores)."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(v) for v in f.readline().split()[1:9]]   # user..steal, not guest
        with open("/proc/self/stat") as f:
            # field 2 (comm) may hold spaces: split after its closing parenthesis;
            # utime, stime are fields 14, 15 (11, 12 after it), all threads included
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = cpu[3] + cpu[4]                                      # idle + iowait
    return sum(cpu) - idle, sum(cpu), int(rest[11]) + int(rest[12])


def other_cpu(c0, c1):
    """(other processes' busy ticks, total ticks) between two cpu_counters()."""
    if c0 is None or c1 is None:
        return 0, 0
    return max(0, (c1[0] - c0[0]) - (c1[2] - c0[2])), c1[1] - c0[1]


def code_version():
    """The git commit of the checkout this file runs from (+"-dirty" with uncommitted
    changes to tracked files outside benchmarks/results, which a run itself rewrites),
    or None outside a git checkout: which code a kept result was measured with."""
    import subprocess
    root = os.path.dirname(os.path.dirname(HERE))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short=10", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":(exclude)benchmarks/results"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _median_after_warmup(times, warmup):
    t = times[warmup:] if len(times) > warmup else times
    return float(np.median(t)), float(np.mean(t)), len(t)


def _load_epoch_checkpoint(spec):
    """The epoch checkpoint of this exact configuration, or None. Written and read
    only by train_loop, in the caller's own results folder."""
    path = spec.get("ckpt_path")
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            ck = pickle.load(f)
    except Exception as e:  # noqa: BLE001 - a damaged file is never taken for a checkpoint
        print(f"  ignoring unreadable checkpoint {path}: {e}", file=sys.stderr)
        return None
    return ck if ck.get("config") == spec.get("config") else None


def train_loop(spec, order, train_step, evaluate, set_lr, get_state, set_state):
    """The loop both frameworks share: epochs of `order` in batches, the lr schedule,
    an evaluation (loss, accuracy) after every epoch (and before training when
    spec["eval_before"]).

    With spec["ckpt_path"], the training state is checkpointed (atomically) after
    each epoch but the last, so a run of hours stopped at any point resumes at its
    last whole epoch with the same weights, optimizer and generator state."""
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; no bar rather than a failure
        def tqdm(it, **_):
            return it
    epochs, bs = spec["epochs"], spec["batch_size"]
    per_epoch = [[order[e][i:i + bs] for i in range(0, order.shape[1], bs)]
                 for e in range(epochs)]                  # the last batch may be short
    total = sum(len(b) for b in per_epoch)
    label = f"{spec['model']} {spec['precision']}"
    rss_start = peak_rss_bytes()
    losses, times, epochs_out = [], [], []
    peak_saved, step, first, run_s_before, rss_before = 0, 0, 0, 0.0, 0
    before = None
    other, ticks = 0, 0                   # other processes' CPU ticks / all ticks, training only
    code = [code_version()]               # one per process of a resumed run
    ck = _load_epoch_checkpoint(spec)
    if ck is not None:
        set_state(ck["state"])
        losses, times, epochs_out = ck["losses"], ck["times"], ck["epochs_out"]
        peak_saved, step, first = ck["peak_saved"], ck["step"], ck["epochs_done"]
        run_s_before, rss_before = ck["run_s"], ck["peak_rss_bytes"]
        before = ck.get("before")
        # checkpoints written before these were recorded have neither: unknown, not zero
        other, ticks = ck.get("other_ticks", 0), ck.get("ticks", 0)
        code = ck.get("code", [None]) + code
        print(f"  resumed from {spec['ckpt_path']} after epoch {first}", file=sys.stderr,
              flush=True)
    elif spec.get("eval_before"):
        loss, acc = evaluate()
        before = {"test_loss": loss, "test_acc": acc}
        print(f"  {label} before training: test loss {loss:.4f}  test acc {acc:.4f}",
              file=sys.stderr, flush=True)
    t_run = time.perf_counter()
    for e in range(first, epochs):
        ep_losses, t_ep, c_ep = [], time.perf_counter(), cpu_counters()
        for idx in tqdm(per_epoch[e], desc=f"{label} epoch {e + 1}/{epochs}", leave=False,
                        mininterval=2.0, file=sys.stderr, disable=not spec.get("progress", True)):
            set_lr(_lr_at(spec, step, total))
            lv, dt, saved = train_step(idx)
            if not np.isfinite(lv):
                raise FloatingPointError(f"{label}: the loss is {lv} at step {step} "
                                         f"(diverged; try a lower --lr than {spec['lr']})")
            ep_losses.append(lv)
            times.append(dt)
            peak_saved = max(peak_saved, saved)
            step += 1
        train_s = time.perf_counter() - t_ep
        o, t = other_cpu(c_ep, cpu_counters())
        other, ticks = other + o, ticks + t
        t_ev = time.perf_counter()
        loss, acc = evaluate()
        epochs_out.append({"epoch": e + 1, "train_loss": float(np.mean(ep_losses)),
                           "test_loss": loss, "test_acc": acc, "train_s": train_s,
                           "eval_s": time.perf_counter() - t_ev,
                           "other_cpu_share": o / t if t else None})
        losses += ep_losses
        print(f"  {label} epoch {e + 1}/{epochs}: train loss {np.mean(ep_losses):.4f}  test "
              f"acc {acc:.4f}  {1e3 * np.median(times[-len(ep_losses):]):.1f} ms/step "
              "(median)", file=sys.stderr, flush=True)
        if spec.get("ckpt_path") and e + 1 < epochs:
            write_bytes(spec["ckpt_path"], pickle.dumps({
                "config": spec.get("config"), "epochs_done": e + 1, "step": step,
                "losses": losses, "times": times, "epochs_out": epochs_out,
                "peak_saved": peak_saved, "before": before, "other_ticks": other,
                "ticks": ticks, "code": code,
                "run_s": run_s_before + time.perf_counter() - t_run,
                "peak_rss_bytes": max(rss_before, peak_rss_bytes()), "state": get_state()}))
    med, mean, n = _median_after_warmup(times, spec["warmup_steps"])
    return {"test_acc": epochs_out[-1]["test_acc"], "test_loss": epochs_out[-1]["test_loss"],
            "before": before, "epochs": epochs_out,
            "step_losses": [float(f"{v:.6g}") for v in losses],   # 6 digits: curves, not JSON size
            "ms_step_median": 1e3 * med, "ms_step_mean": 1e3 * mean, "steps": len(times),
            "steps_timed": n, "run_s": run_s_before + time.perf_counter() - t_run,
            "resumed_after_epoch": first or None,
            "peak_rss_bytes": max(rss_before, peak_rss_bytes()),
            "peak_rss_before_training_bytes": rss_start,
            "peak_saved_activation_bytes": int(peak_saved),
            # share of the machine's CPU time other processes used during training
            # (0: the run had the machine to itself); None where not measured
            "other_cpu_share": other / ticks if ticks and all(
                ep.get("other_cpu_share") is not None for ep in epochs_out) else None,
            "code": list(dict.fromkeys(code))}    # distinct, in order of the segments


def child_edgetrain(spec):
    import edgetrain as et
    from edgetrain.cli.common import build_model, freeze

    x, y, xt, yt, order, init = _load_inputs(spec)
    et.set_backend(spec["backend"])
    # as `edgetrain train`: seed, then build (the init draws from the generator), so
    # the int8 backward passes draw the same stochastic-rounding seeds afterwards
    et.manual_seed(spec["seed"])
    model = build_model(spec["model"], spec["num_classes"])
    model.load_state_dict(init)
    model.set_precision(spec["precision"])
    params = freeze(model, spec.get("train_only"))
    if spec["optimizer"] == "sgd":
        opt = et.optim.SGD(params, lr=spec["lr"], momentum=spec["momentum"],
                           weight_decay=spec["weight_decay"])
    else:
        opt = et.optim.Adam(params, lr=spec["lr"], weight_decay=spec["weight_decay"])
    crit = et.nn.CrossEntropyLoss()
    crit_sum = et.nn.CrossEntropyLoss(reduction="sum")
    ebs = spec["eval_batch_size"]

    def evaluate():
        model.eval()
        correct, loss = 0, 0.0
        with et.no_grad():
            for i in range(0, len(xt), ebs):
                out = model(et.from_numpy(xt[i:i + ebs]))                  # (b, classes)
                loss += float(crit_sum(out, et.tensor(yt[i:i + ebs])).item())
                correct += int((np.asarray(out.numpy()).argmax(1) == yt[i:i + ebs]).sum())
        return loss / len(xt), correct / len(xt)

    def train_step(idx):
        model.train()   # evaluate() left it in eval mode (BatchNorm: batch statistics again)
        bx = et.from_numpy(np.ascontiguousarray(x[idx]))           # (b, 1, 28, 28)
        by = et.tensor(np.ascontiguousarray(y[idx]), dtype="int64")
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = crit(model(bx), by)
        saved = et.saved_activation_bytes()                         # graph alive: its peak
        loss.backward()
        opt.step()
        lv = loss.item()
        return lv, time.perf_counter() - t0, saved

    set_lr = _lr_setter(opt)

    def get_state():   # what an epoch checkpoint must hold to continue exactly
        return {"model": {k: np.array(v, copy=True) for k, v in model.state_dict().items()},
                "opt": opt.state_dict(), "rng": et.random.get_rng_state()}

    def set_state(st):
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        et.random.set_rng_state(st["rng"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        out = train_loop(spec, order, train_step, evaluate, set_lr, get_state, set_state)
    # e.g. "backend 'onednn' has no int8 conv2d primitive: running it on 'ref' instead"
    out["warnings"] = sorted({str(w.message) for w in caught})
    out["framework"] = "edgetrain"
    return out


def child_torch(spec):
    import torch
    from torch import nn

    # by file, not `import edgetrain.models...`: that would load edgetrain's extension
    path = os.path.join(os.path.dirname(HERE), "models", "torch_reference.py")
    mod_spec = importlib.util.spec_from_file_location("edgetrain_torch_reference", path)
    torch_reference = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(torch_reference)
    torch_model = torch_reference.torch_model

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    x, y, xt, yt, order, init = _load_inputs(spec)
    model = torch_model(spec["model"], num_classes=spec["num_classes"])
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in init.items()})
    prefixes = [s.strip() for s in (spec.get("train_only") or "").split(",") if s.strip()]
    params = []
    for name, p in model.named_parameters():      # --train-only: as edgetrain's freeze()
        keep = not prefixes or any(name.startswith(pre) for pre in prefixes)
        p.requires_grad_(keep)
        if keep:
            params.append(p)
    if spec["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=spec["lr"], momentum=spec["momentum"],
                              weight_decay=spec["weight_decay"])
    else:
        opt = torch.optim.Adam(params, lr=spec["lr"], weight_decay=spec["weight_decay"])
    crit = nn.CrossEntropyLoss()
    ebs = spec["eval_batch_size"]

    # fp32 inputs of every Conv2d / Linear in one forward: what edgetrain's fp32
    # path saves for backward (et.saved_activation_bytes' definition)
    fwd_bytes = [0]

    def count(_mod, inp):
        fwd_bytes[0] += inp[0].numel() * inp[0].element_size()

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_pre_hook(count)

    def evaluate():
        model.eval()
        correct, loss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(xt), ebs):
                out = model(torch.from_numpy(xt[i:i + ebs]))
                yb = torch.from_numpy(yt[i:i + ebs])
                loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
                correct += int((out.argmax(1) == yb).sum())
        return loss / len(xt), correct / len(xt)

    def train_step(idx):
        model.train()   # evaluate() left it in eval mode (BatchNorm: batch statistics again)
        bx = torch.from_numpy(np.ascontiguousarray(x[idx]))
        by = torch.from_numpy(np.ascontiguousarray(y[idx]))
        t0 = time.perf_counter()
        opt.zero_grad()
        fwd_bytes[0] = 0
        loss = crit(model(bx), by)
        saved = fwd_bytes[0]
        loss.backward()
        opt.step()
        lv = loss.item()
        return lv, time.perf_counter() - t0, saved

    set_lr = _lr_setter(opt)

    def get_state():
        return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "opt": opt.state_dict(), "rng": torch.get_rng_state()}

    def set_state(st):
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        torch.set_rng_state(st["rng"])

    out = train_loop(spec, order, train_step, evaluate, set_lr, get_state, set_state)
    out["framework"] = f"pytorch {torch.__version__}"
    out["warnings"] = []
    return out


def child_main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    fn = child_torch if spec["precision"] == TORCH else child_edgetrain
    res = fn(spec)
    res["config"] = spec.get("config")
    res["model"], res["precision"] = spec["model"], spec["precision"]
    write_json(spec["result_path"], res)
    return 0


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == HERE:
        del sys.path[0]      # this folder's train.py / compare.py must not shadow anything
    if len(sys.argv) != 2:
        print("usage: python runs.py SPEC.json (started by edgetrain compare)", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(child_main(sys.argv[1]))
    except (FloatingPointError, OSError, ValueError, KeyError) as e:
        print(f"edgetrain run: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
