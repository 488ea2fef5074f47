"""Long run (issue 6.6): 20,000 training steps of lenet in int8 with flat memory
and no slowdown.

    .venv/bin/python stress/long_run.py --steps 20000

What `edgetrain train` does per step (forward, cross-entropy, backward, SGD with
momentum, loss.item()), in this process so that it can read its own resident set:
lenet int8 on the 8,000 training images of the MNIST 10k subset, batch 64, looping
epochs (125 steps each, a fresh shuffled order per epoch as `train` draws it),
constant lr 0.05, momentum 0.9, the default backend.

Measured: the wall-clock and CPU time of every step, and every --every steps
VmRSS, RssAnon, RssFile, VmHWM (/proc/self/status), the glibc heap's arena and
in-use bytes (mallinfo2), the loss and the load average. All the measurements go
into arrays allocated before the first step, so the measuring itself does not
grow the heap.

Pass rules (stated in the record):
- memory: RSS growth < 1% from the end of warm-up (step --warmup, default 1000)
  to the end, both for the last sample and for the largest sample after warm-up;
- speed: the median step time of the last 1000 steps is within 10% of the median
  of steps 1000-2000 -- of a fresh run of the same training, started when the long
  one reaches its last 1000 steps, the two taking turns of 100 steps: on a shared
  machine the load changes over the minutes between steps 1000 and 19,000 (step
  times here swing by 2x), while turns of a few seconds see the same load. Medians,
  so that single slow steps do not decide. (--no-interleave: against this run's
  own steps 1000-2000, as the short test does; both ratios are in the record.)
- no leak: the heap's in-use bytes (every malloc of the C core and NumPy) grow by
  less than 256 KiB from the end of warm-up to the end (~13 bytes per step);
- the loss falls (mean of the last 1000 steps' losses below the first 100's).

RSS and the in-use bytes tell a leak from fragmentation: glibc's heap keeps the
freed ~1.2 MB activation buffers of a step and reuses them, but where a longer-
lived block lands in a hole, the next big buffer extends the heap instead; the
arena then grows by a buffer's size while the in-use bytes stay flat.

Writes benchmarks/results/stress/long_run.{json,md} and long_run.png (RSS and
step time against the step), each atomically, unless --no-record; exits 1 when a
rule fails.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stresslib  # noqa: E402  (puts this checkout first on sys.path)

import numpy as np  # noqa: E402
import numpy.ma  # noqa: E402,F401  (np.median imports it at its first call: the first
#                  log line would add ~1,000 objects and ~0.5 MiB after the warm-up)

import edgetrain as et  # noqa: E402
from edgetrain.cli.common import NORMALIZATION, build_model, epoch_seed, normalize  # noqa: E402

RSS_BOUND_PERCENT = 1.0
IN_USE_BOUND_KIB = 256
SLOWDOWN_BOUND = 1.10
WINDOW = 1000


def setup(data, seed, precision):
    """(x, y, model, optimizer, loss) as `edgetrain train` builds them."""
    images, labels = et.data.load_mnist(data, train=True)
    x = normalize(images, NORMALIZATION["mnist"])
    y = labels.astype(np.int64)
    et.manual_seed(seed)
    model = build_model("lenet", 10)
    model.set_precision(precision)
    model.train()
    opt = et.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return x, y, model, opt, et.nn.CrossEntropyLoss()


def batches(x, y, batch_size, seed):
    """Mini-batches over endless epochs, each in the order `train` draws for it."""
    epoch = 0
    while True:
        yield from et.data.DataLoader((x, y), batch_size=batch_size, shuffle=True,
                                      seed=epoch_seed(seed, epoch))
        epoch += 1


def train_step(model, opt, crit, bx, by):
    opt.zero_grad()
    loss = crit(model(bx), by)
    loss.backward()
    opt.step()
    return float(loss.item())


class FreshRun:
    """A second, fresh process doing the same training, for the slowdown rule: once
    the long run reaches its last `window` steps, the fresh one runs `warmup` steps
    and then the two take turns, `chunk` steps each, so that both are timed under the
    same load of the (shared) machine. Started before the long run's first sample so
    that its pipes are in the baseline; it waits, idle, until asked. Protocol on its
    stdin / stdout, one byte each: w(arm up) -> r(eady); g(o: one chunk) -> d(one);
    after the last chunk it writes its step times as JSON and exits."""

    def __init__(self, data, warmup, window, chunk, batch_size, precision, seed):
        import subprocess
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--fresh-child", "--warmup", str(warmup), "--window",
             str(window), "--every", str(chunk), "--batch-size", str(batch_size),
             "--precision", precision, "--seed", str(seed), "--data-dir", str(data)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=stresslib.child_env())
        self.tx, self.rx = self.proc.stdin.fileno(), self.proc.stdout.fileno()

    def ask(self, cmd, expect):
        os.write(self.tx, cmd)
        got = os.read(self.rx, 1)
        if got != expect:
            self.proc.kill()
            raise RuntimeError(f"the fresh comparison run answered {got!r} to {cmd!r} "
                               f"(exit {self.proc.wait()})")

    def result(self):
        chunks = []
        while True:
            b = os.read(self.rx, 65536)
            if not b:
                break
            chunks.append(b)
        if self.proc.wait() != 0:
            raise RuntimeError(f"the fresh comparison run exited {self.proc.returncode}")
        return json.loads(b"".join(chunks))


def fresh_child(a):
    """The fresh run of FreshRun (this script with --fresh-child)."""
    x, y, model, opt, crit = setup(stresslib.data_dir(a.data_dir), a.seed, a.precision)
    it = batches(x, y, a.batch_size, a.seed)
    wall, cpu = [], []
    if os.read(0, 1) != b"w":
        return 1
    for _ in range(a.warmup):
        train_step(model, opt, crit, *next(it))
    os.write(1, b"r")
    for _ in range(a.window // a.every):
        if os.read(0, 1) != b"g":
            return 1
        for _ in range(a.every):
            bx, by = next(it)
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(model, opt, crit, bx, by)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        os.write(1, b"d")
    os.write(1, json.dumps({"wall": wall, "cpu": cpu}).encode())
    return 0


def run(steps=20000, warmup=1000, every=100, batch_size=64, precision="int8", seed=0,
        data=None, log=print, window=WINDOW, interleave=False):
    """The long run; with `interleave`, the slowdown rule compares its last `window`
    steps with a fresh run's steps warmup..warmup+window, timed in turns (FreshRun)."""
    data = stresslib.data_dir(data)
    if steps <= warmup:
        raise ValueError(f"--steps {steps} must exceed --warmup {warmup}")
    window = min(window, steps - warmup)      # short runs: compare shorter windows
    if interleave and (window % every or (steps - window) % every):
        raise ValueError(f"--every {every} must divide the window {window} and --steps")
    x, y, model, opt, crit = setup(data, seed, precision)

    # every measurement preallocated: appending to Python lists would itself grow
    # the resident set by a few hundred KiB over 20,000 steps
    # (np.full, not np.zeros: calloc'd pages would become resident as they fill)
    step_s = np.full(steps, np.nan)
    cpu_s = np.full(steps, np.nan)            # process CPU time (all threads) per step
    losses = np.full(steps, np.nan)
    n_samples = steps // every + 2
    s_step = np.full(n_samples, -1, np.int64)
    # KiB: VmRSS, its anonymous and file-backed parts, VmHWM; heap bytes (mallinfo2)
    s_mem = np.full((n_samples, 7), -1, np.int64)
    s_load = np.full(n_samples, np.nan)
    s_time = np.full(n_samples, np.nan)
    ns = 0
    objects_at = {}
    fresh = (FreshRun(data, warmup, window, every, batch_size, precision, seed)
             if interleave else None)
    load_start = stresslib.loadavg()
    t_start = time.perf_counter()

    def sample(step):
        nonlocal ns
        s_step[ns] = step
        for j, field in enumerate(("VmRSS", "RssAnon", "RssFile", "VmHWM")):
            s_mem[ns, j] = stresslib.proc_status_kib(field) or -1
        heap = stresslib.mallinfo()
        if heap:
            s_mem[ns, 4:] = (heap["arena"] // 1024, heap["mmapped"] // 1024,
                             heap["in_use"] // 1024)
        la = stresslib.loadavg()
        s_load[ns] = la[0] if la else math.nan
        s_time[ns] = time.perf_counter() - t_start
        ns += 1

    sample(0)
    it = batches(x, y, batch_size, seed)
    for step in range(1, steps + 1):          # step: the number of steps done after it
        if fresh is not None and step - 1 == steps - window:
            log(f"step {step - 1}: the fresh comparison run warms up ({warmup} steps)")
            fresh.ask(b"w", b"r")
        bx, by = next(it)
        t0, c0 = time.perf_counter(), time.process_time()
        lv = train_step(model, opt, crit, bx, by)
        step_s[step - 1] = time.perf_counter() - t0
        cpu_s[step - 1] = time.process_time() - c0
        losses[step - 1] = lv
        if not math.isfinite(lv):
            raise RuntimeError(f"step {step}: the loss is {lv}")
        if step % every == 0:
            # the log line and the object count before the sample: what they
            # allocate is in the warm-up sample, not counted as growth
            if step % (every * 10) == 0:
                log(f"step {step}/{steps}: loss {lv:.4f}, RSS {s_mem[ns - 1, 0] / 1024:.1f} "
                    f"MiB, median step {np.median(step_s[step - every:step]) * 1e3:.2f} ms")
            if step >= warmup and "warmup" not in objects_at:
                objects_at["warmup"] = len(gc.get_objects())
            sample(step)
            if fresh is not None and step > steps - window:
                fresh.ask(b"g", b"d")             # its turn: `every` steps
    objects_at["end"] = len(gc.get_objects())
    if s_step[ns - 1] != steps:
        sample(steps)
    seconds = time.perf_counter() - t_start
    fresh_times = fresh.result() if fresh is not None else None
    epoch = steps / math.ceil(len(x) / batch_size)

    s_step, s_mem, s_load, s_time = (a[:ns] for a in (s_step, s_mem, s_load, s_time))
    s_rss = s_mem[:, 0]
    i_warm = int(np.searchsorted(s_step, warmup))
    rss_warm, rss_end = int(s_rss[i_warm]), int(s_rss[-1])
    rss_peak = int(s_rss[i_warm:].max())
    growth_end = (rss_end - rss_warm) / rss_warm * 100
    growth_peak = (rss_peak - rss_warm) / rss_warm * 100
    early = step_s[warmup:warmup + window]
    late = step_s[steps - window:]
    med_early, med_late = float(np.median(early)), float(np.median(late))
    ratio = med_late / med_early
    cpu_early = float(np.median(cpu_s[warmup:warmup + window]))
    cpu_late = float(np.median(cpu_s[steps - window:]))
    med_fresh = cpu_fresh = fresh_ratio = None
    if fresh_times:
        med_fresh = float(np.median(fresh_times["wall"]))
        cpu_fresh = float(np.median(fresh_times["cpu"]))
        fresh_ratio = med_late / med_fresh
    first_loss = float(losses[:100].mean())
    final_loss = float(losses[-window:].mean())
    memory_ok = growth_end < RSS_BOUND_PERCENT and growth_peak < RSS_BOUND_PERCENT
    in_use_growth = None
    if s_mem[i_warm, 6] >= 0:                  # glibc: mallinfo2 was read
        in_use_growth = int(s_mem[-1, 6] - s_mem[i_warm, 6])
    no_leak = in_use_growth is None or in_use_growth < IN_USE_BOUND_KIB
    # the rule: against the fresh run timed in turns when there is one (the same
    # machine load for both); else the early window of this run
    speed_ok = (fresh_ratio if fresh_ratio is not None else ratio) <= SLOWDOWN_BOUND
    learns = final_loss < first_loss
    return {
        "test": "long_run",
        "pass": bool(memory_ok and speed_ok and learns and no_leak),
        "memory_ok": bool(memory_ok), "speed_ok": bool(speed_ok), "learns": bool(learns),
        "no_leak": bool(no_leak), "heap_in_use_growth_kib": in_use_growth,
        "heap_arena_growth_kib": int(s_mem[-1, 4] - s_mem[i_warm, 4]),
        "steps": steps, "warmup": warmup, "window": window, "sample_every": every,
        "epochs": round(epoch, 2),
        "config": {"model": "lenet", "precision": precision, "batch_size": batch_size,
                   "optimizer": "sgd lr 0.05 momentum 0.9 (constant)", "seed": seed,
                   "train_images": int(len(x)), "data": str(data),
                   "backend": et.get_backend()},
        "rss_kib_at_warmup": rss_warm, "rss_kib_at_end": rss_end,
        "rss_kib_peak_after_warmup": rss_peak,
        "rss_kib_at_start": int(s_rss[0]), "vmhwm_kib_at_end": int(s_mem[-1, 3]),
        "rss_anon_kib_at_warmup_end": [int(s_mem[i_warm, 1]), int(s_mem[-1, 1])],
        "rss_file_kib_at_warmup_end": [int(s_mem[i_warm, 2]), int(s_mem[-1, 2])],
        "heap_in_use_kib_at_warmup_end": [int(s_mem[i_warm, 6]), int(s_mem[-1, 6])],
        "heap_arena_kib_at_warmup_end": [int(s_mem[i_warm, 4]), int(s_mem[-1, 4])],
        "rss_growth_percent": round(growth_end, 4),
        "rss_peak_growth_percent": round(growth_peak, 4),
        "python_objects": objects_at,
        "median_step_ms_early": round(med_early * 1e3, 4),
        "median_step_ms_late": round(med_late * 1e3, 4),
        "p90_step_ms_early": round(float(np.percentile(early, 90)) * 1e3, 4),
        "p90_step_ms_late": round(float(np.percentile(late, 90)) * 1e3, 4),
        "late_over_early": round(ratio, 4),
        "interleaved": fresh_ratio is not None,
        "median_step_ms_fresh": None if med_fresh is None else round(med_fresh * 1e3, 4),
        "median_cpu_ms_fresh": None if cpu_fresh is None else round(cpu_fresh * 1e3, 4),
        "late_over_fresh": None if fresh_ratio is None else round(fresh_ratio, 4),
        "median_step_ms_all": round(float(np.median(step_s)) * 1e3, 4),
        # CPU time per step (process_time: every thread of the process): less sensitive
        # to the neighbours' load than wall-clock time; reported, not ruled on
        "median_cpu_ms_early": round(cpu_early * 1e3, 4),
        "median_cpu_ms_late": round(cpu_late * 1e3, 4),
        "cpu_late_over_early": round(cpu_late / cpu_early, 4),
        "first_loss": round(first_loss, 5), "final_loss": round(final_loss, 5),
        "seconds": round(seconds, 1),
        "loadavg_start": load_start, "loadavg_end": stresslib.loadavg(),
        "rules": {
            "memory": f"RSS growth < {RSS_BOUND_PERCENT}% from step {warmup} to the end "
                      "(last sample and largest sample after warm-up)",
            "speed": (f"median step time of the last {window} steps <= {SLOWDOWN_BOUND:.2f} x "
                      f"the median of a fresh run's steps {warmup}-{warmup + window}, the two "
                      f"timed in turns of {every} steps (the same machine load for both)"
                      if fresh_ratio is not None else
                      f"median step time of the last {window} steps <= {SLOWDOWN_BOUND:.2f} x "
                      f"the median of steps {warmup}-{warmup + window}"),
            "learning": f"mean loss of the last {window} steps below the first 100 steps'",
            "no_leak": f"heap in-use bytes (mallinfo2) grow < {IN_USE_BOUND_KIB} KiB from step "
                       f"{warmup} to the end",
        },
        "samples": {"step": s_step.tolist(), "rss_kib": s_rss.tolist(),
                    "rss_anon_kib": s_mem[:, 1].tolist(), "rss_file_kib": s_mem[:, 2].tolist(),
                    "vmhwm_kib": s_mem[:, 3].tolist(),
                    "heap_arena_kib": s_mem[:, 4].tolist(),
                    "heap_mmapped_kib": s_mem[:, 5].tolist(),
                    "heap_in_use_kib": s_mem[:, 6].tolist(),
                    "median_step_ms": [round(float(np.median(step_s[max(0, s - every):s]))
                                             * 1e3, 4) if s else None for s in s_step],
                    "median_cpu_ms": [round(float(np.median(cpu_s[max(0, s - every):s]))
                                            * 1e3, 4) if s else None for s in s_step],
                    "loss": [round(float(losses[s - 1]), 5) if s else None for s in s_step],
                    "loadavg_1min": s_load.tolist(), "seconds": np.round(s_time, 2).tolist()},
    }


def plot(r):
    """PNG bytes: RSS and per-interval median step time against the step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    s = r["samples"]
    fig = Figure(figsize=(10, 8.5))
    FigureCanvasAgg(fig)
    ax1, ax3, ax2 = fig.subplots(3, 1, sharex=True, height_ratios=[3, 2, 3])
    rss = np.array(s["rss_kib"]) / 1024
    ax1.plot(s["step"], rss, "-", lw=1.2, label="VmRSS")
    ax1.plot(s["step"], np.array(s["rss_anon_kib"]) / 1024, "-", lw=1, alpha=0.7,
             label="RssAnon (its anonymous part)")
    warm = r["rss_kib_at_warmup"] / 1024
    ax1.axhline(warm * (1 + RSS_BOUND_PERCENT / 100), color="r", ls="--", lw=0.8,
                label=f"+{RSS_BOUND_PERCENT}% of the RSS at step {r['warmup']}")
    ax1.axvline(r["warmup"], color="gray", ls=":", lw=0.8)
    ax1.set(ylabel="resident set (MiB)",
            title=f"lenet {r['config']['precision']}, batch {r['config']['batch_size']}: "
                  f"{r['steps']} steps, RSS growth {r['rss_growth_percent']:+.3f}% "
                  f"(peak {r['rss_peak_growth_percent']:+.3f}%)")
    ax1.legend(loc="lower right")
    ax1.grid(alpha=0.3)
    if min(s["heap_arena_kib"]) >= 0:
        ax3.plot(s["step"], np.array(s["heap_arena_kib"]) / 1024, "-", lw=1.2,
                 label="glibc heap arenas")
        ax3.plot(s["step"], np.array(s["heap_in_use_kib"]) / 1024, "-", lw=1.2,
                 label="of which in use (mallinfo2)")
        ax3.legend(loc="lower right", fontsize=8)
    ax3.set(ylabel="heap (MiB)")
    ax3.grid(alpha=0.3)
    ms = [np.nan if v is None else v for v in s["median_step_ms"]]
    ax2.plot(s["step"], ms, "-", lw=1, label=f"median step time per {r['sample_every']} steps")
    cpu = [np.nan if v is None else v for v in s["median_cpu_ms"]]
    ax2.plot(s["step"], cpu, "-", lw=0.8, alpha=0.7, color="purple",
             label="median CPU time per step (all threads)")
    w = r["window"]
    ax2.hlines([r["median_step_ms_early"]], r["warmup"], r["warmup"] + w, colors="g", lw=2.5,
               label=f"median of steps {r['warmup']}-{r['warmup'] + w}")
    ax2.hlines([r["median_step_ms_late"]], r["steps"] - w, r["steps"], colors="r", lw=2.5,
               label=f"median of the last {w} steps ({r['late_over_early']:.3f}x)")
    if r["interleaved"]:
        ax2.hlines([r["median_step_ms_fresh"]], r["steps"] - w, r["steps"], colors="orange",
                   lw=2.5, ls="--", label=f"median of a fresh run's steps {r['warmup']}-"
                                          f"{r['warmup'] + w}, timed in turns with these "
                                          f"({r['late_over_fresh']:.3f}x)")
    ax2.set(xlabel="training step", ylabel="step time (ms)")
    ax2.legend(loc="upper right", fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def diagnosis(r):
    """A line telling fragmentation from a leak when the RSS bound failed."""
    if r["memory_ok"] or r["heap_in_use_growth_kib"] is None:
        return []
    if r["no_leak"] and r["heap_arena_growth_kib"] > 0:
        return [f"- diagnosis: RSS grew while the heap's in-use bytes did not "
                f"({r['heap_in_use_growth_kib']:+d} KiB): the glibc arena grew by "
                f"{r['heap_arena_growth_kib']} KiB -- heap fragmentation (freed blocks the "
                "allocator could not reuse for the next large buffer), not a leak"]
    return [f"- diagnosis: the heap's in-use bytes grew by {r['heap_in_use_growth_kib']} KiB"]


def markdown(r):
    c, m = r["config"], r["machine"]
    ok = {True: "ok", False: "FAILED"}
    return "\n".join([
        "# Long run (issue 6.6)",
        "",
        f"**{'PASS' if r['pass'] else 'FAIL'}**: {r['steps']} training steps of lenet "
        f"{c['precision']} (batch {c['batch_size']}, {c['train_images']} MNIST images, "
        f"{r['epochs']} epochs, backend {c['backend']}) in {r['seconds']} s.",
        "",
        "| what | value | rule | |",
        "| --- | --- | --- | --- |",
        f"| RSS at step {r['warmup']} / at the end / peak after | "
        f"{r['rss_kib_at_warmup'] / 1024:.1f} / {r['rss_kib_at_end'] / 1024:.1f} / "
        f"{r['rss_kib_peak_after_warmup'] / 1024:.1f} MiB | | |",
        f"| RSS growth (end; peak) | {r['rss_growth_percent']:+.3f}%; "
        f"{r['rss_peak_growth_percent']:+.3f}% | < {RSS_BOUND_PERCENT}% | "
        f"{ok[r['memory_ok']]} |",
        f"| RssAnon / RssFile growth | "
        f"{(r['rss_anon_kib_at_warmup_end'][1] - r['rss_anon_kib_at_warmup_end'][0]) / 1024:+.2f}"
        f" / {(r['rss_file_kib_at_warmup_end'][1] - r['rss_file_kib_at_warmup_end'][0]) / 1024:+.2f}"
        " MiB | | |",
        f"| glibc heap: in-use bytes growth; arena growth | "
        f"{r['heap_in_use_growth_kib']} KiB; {r['heap_arena_growth_kib']} KiB | in-use < "
        f"{IN_USE_BOUND_KIB} KiB | {ok[r['no_leak']]} |",
        f"| median step, steps {r['warmup']}-{r['warmup'] + r['window']} / last "
        f"{r['window']} | {r['median_step_ms_early']:.2f} / {r['median_step_ms_late']:.2f} ms "
        f"({r['late_over_early']:.3f}x) | "
        + ("(reported: load differs between the windows) | |" if r["interleaved"] else
           f"<= {SLOWDOWN_BOUND:.2f}x | {ok[r['speed_ok']]} |"),
        *([f"| median step, a fresh run's steps {r['warmup']}-{r['warmup'] + r['window']} "
           f"timed in turns with the last {r['window']} | {r['median_step_ms_fresh']:.2f} / "
           f"{r['median_step_ms_late']:.2f} ms ({r['late_over_fresh']:.3f}x) | <= "
           f"{SLOWDOWN_BOUND:.2f}x | {ok[r['speed_ok']]} |",
           f"| median CPU time per step, fresh run / last {r['window']} | "
           f"{r['median_cpu_ms_fresh']:.2f} / {r['median_cpu_ms_late']:.2f} ms | (reported) | |"]
          if r["interleaved"] else []),
        f"| median CPU time per step (all threads), same windows | "
        f"{r['median_cpu_ms_early']:.2f} / {r['median_cpu_ms_late']:.2f} ms "
        f"({r['cpu_late_over_early']:.3f}x) | (reported) | |",
        f"| 90th percentile step, same windows | {r['p90_step_ms_early']:.2f} / "
        f"{r['p90_step_ms_late']:.2f} ms | | |",
        f"| mean loss, first 100 / last {r['window']} steps | {r['first_loss']:.4f} / "
        f"{r['final_loss']:.4f} | falls | {ok[r['learns']]} |",
        f"| Python objects (gc) at step {r['warmup']} / at the end | "
        f"{r['python_objects'].get('warmup')} / {r['python_objects'].get('end')} | | |",
        "",
        f"- rules: memory: {r['rules']['memory']}; no leak: {r['rules']['no_leak']}; speed: "
        f"{r['rules']['speed']}; learning: {r['rules']['learning']}",
        *diagnosis(r),
        f"- load average {r['loadavg_start']} at the start, {r['loadavg_end']} at the end "
        "(per-sample 1-minute load in the JSON)",
        stresslib.machine_md(m).rstrip(),
        f"- `stress/long_run.py --steps {r['steps']}`, {m['date']}; plot: long_run.png",
        "",
        "![RSS and step time](long_run.png)",
        "",
    ])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--every", type=int, default=100, help="sample RSS every N steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="int8")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out-dir", default=None)
    p.add_argument("--window", type=int, default=WINDOW,
                   help="steps compared by the slowdown rule (default 1000)")
    p.add_argument("--no-interleave", action="store_true",
                   help="slowdown rule against this run's early window instead of a fresh "
                        "run timed in turns")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--fresh-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.fresh_child:
        return fresh_child(a)
    r = run(a.steps, a.warmup, a.every, a.batch_size, a.precision, a.seed, data=a.data_dir,
            window=a.window, interleave=not a.no_interleave)
    r["machine"] = stresslib.machine()
    if not a.no_record:
        paths = stresslib.write_record("long_run", r, markdown(r), a.out_dir,
                                       extra={"long_run.png": plot(r)})
        print("wrote " + ", ".join(str(x) for x in paths))
    print(f"{'PASS' if r['pass'] else 'FAIL'}: {r['steps']} steps, RSS growth "
          f"{r['rss_growth_percent']:+.3f}% (peak {r['rss_peak_growth_percent']:+.3f}%), "
          f"median step {r['median_step_ms_early']:.2f} -> {r['median_step_ms_late']:.2f} ms "
          f"({r['late_over_early']:.3f}x), {r['seconds']} s")
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
