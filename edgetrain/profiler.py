"""edgetrain.profiler: where the time of a training step goes, CPU and accelerator.

    with et.profiler.profile() as p:
        with et.profiler.record_function("step"):
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
    print(p.table(sort_by="time", row_limit=20))
    p.export_chrome_trace("trace.json")     # Perfetto / chrome://tracing
    p.save_png("profile.png")               # time per op category and pass
    p.summary()                             # dict: totals + one dict per row
    p.events                                # every recorded range, as dicts

What is recorded (modelled on torch.profiler):
  CPU side (Python): every autograd op's forward and backward (one place:
    Function.apply / the backward walk in autograd.py), the backward walk
    itself ("autograd.backward", its self time is the engine's work), every
    optimizer step (Optimizer.__init_subclass__ wraps step), user ranges
    (`record_function`).
  CPU side (C, core/profile.h): the time a thread is blocked waiting on the
    accelerator queue ("queue.wait"), and the quantize / convert / dequantize
    work inside the low-precision ops ("quantize.input", ...).
  Accelerator (the queue's worker thread): every job -- "conv2d.fwd",
    "conv2d.bwd_data", "conv2d.bwd_weight", "linear.*" -- with its precision,
    the backend that ran it, its useful FLOPs (2*N*Cout*Hout*Wout*Cin/groups*
    KH*KW for each conv pass), the bytes of its operands, its submit / start /
    end times, and the primitive-cache hits / misses / evictions it caused.
All timestamps are CLOCK_MONOTONIC ns (time.monotonic_ns in Python, the C
records' clock), so CPU and accelerator ranges share one time axis. A job
belongs to the innermost Python range open on its submitting thread at its
submit time; a wait or a C range to the innermost Python range around it.

Off (no profile running) the hooks cost one `is None` check per op and the C
side one relaxed atomic load per job / wait: nothing is recorded.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading

from . import _C
from . import autograd as _autograd
from .checkpoint import atomic_write

__all__ = ["profile", "record_function", "is_profiling", "RECORD_FIELDS", "validate_chrome_trace"]

# the tuple layout of _C.profiler_drain()'s records
RECORD_FIELDS = ("kind", "label", "precision", "backend", "status", "queue", "ticket", "thread",
                 "t_submit", "t_start", "t_end", "flops", "bytes", "cache_hits", "cache_misses",
                 "cache_evictions")

_PY_KINDS = ("op", "optimizer", "engine", "user")   # ranges recorded in Python
_ACCEL_TID = 1_000_000_000    # chrome-trace tid of queue q's worker: _ACCEL_TID + q (> OS tids)
_GONE_TID = 900_000_000       # threads that ended before the profile did (OS id unknown)
_state_lock = threading.Lock()
_running = None                # the profile inside its `with`, at most one


def is_profiling():
    """True while a profile is recording."""
    return _autograd._profiler is not None


class record_function(contextlib.ContextDecorator):
    """A named user range: `with record_function("data"): ...` or as a decorator.
    Nothing is recorded (one check) when no profile runs."""

    def __init__(self, name):
        self.name = str(name)
        self._open = []     # (event list, t0) per entry: reentrant as a decorator

    def __enter__(self):
        ev = _autograd._profiler
        self._open.append((ev, _autograd._now() if ev is not None else 0))
        return self

    def __exit__(self, *exc):
        ev, t0 = self._open.pop()
        if ev is not None:
            ev.append(("user", self.name, "", t0, _autograd._now(), _autograd._thread_id()))
        return False


# -- names and categories -----------------------------------------------------------
_SNAKE = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_op_names = {}


def _op_name(cls):
    """Function subclass -> op name: _Conv2d -> conv2d, _BatchNorm -> batch_norm,
    _NLLLoss -> nll_loss, MatMul2D -> mat_mul2d (a `profile_name` attribute wins)."""
    name = _op_names.get(cls)
    if name is None:
        name = getattr(cls, "profile_name", None) or \
            _SNAKE.sub("_", cls.__name__.lstrip("_")).lower()
        _op_names[cls] = name
    return name


def _category(kind, name):
    """The breakdown's op category of a row."""
    if kind == "optimizer":
        return "optimizer"
    if kind == "engine":
        return "autograd"
    if kind == "user":
        return "user"
    if kind == "wait":
        return "wait"
    if name.startswith(("quantize", "dequantize", "convert")):
        return "quantize"
    if name.startswith("conv"):
        return "conv"
    if name in ("linear", "matmul", "mat_mul2d", "mat_mul_nd"):
        return "linear"
    if name.startswith("batch_norm"):
        return "batchnorm"
    if "pool" in name:
        return "pooling"
    if name in ("relu", "relu6", "hardtanh", "tanh", "sigmoid", "clamp"):
        return "activation"
    if "softmax" in name or name.endswith("loss"):
        return "loss"
    return "elementwise"


# -- events ----------------------------------------------------------------------------
class _Ev:
    """One recorded range (CPU or accelerator) plus what analysis attaches to it."""
    __slots__ = ("kind", "name", "pass_", "t0", "t1", "thread", "precision", "backend",
                 "status", "queue", "ticket", "t_submit", "flops", "bytes", "cache",
                 "parent", "owner", "child_ns", "accel_ns", "wait_ns", "quant_ns",
                 "job_flops", "job_bytes", "jobs", "job_precisions", "accel_by_pass")

    def __init__(self, kind, name, pass_, t0, t1, thread):
        self.kind, self.name, self.pass_ = kind, name, pass_
        self.t0, self.t1, self.thread = t0, t1, thread
        self.precision = self.backend = self.status = None
        self.queue = self.ticket = 0
        self.t_submit = t0
        self.flops = self.bytes = -1
        self.cache = (0, 0, 0)
        self.parent = self.owner = None
        self.child_ns = self.accel_ns = self.wait_ns = self.quant_ns = 0
        self.job_flops = self.job_bytes = self.jobs = 0
        self.job_precisions = None
        self.accel_by_pass = None

    @property
    def dur(self):
        return self.t1 - self.t0

    @property
    def label(self):
        return f"{self.name}.{self.pass_}" if self.pass_ else self.name


def _split_label(label):
    """'conv2d.bwd_data' -> ('conv2d', 'bwd_data'); None -> ('job', '')."""
    if not label:
        return "job", ""
    name, _, pass_ = label.partition(".")
    return name, pass_


def _events_from(py_events, records):
    """_Ev objects from the Python tuples and the C records."""
    out = []
    for kind, what, pass_, t0, t1, tid in py_events:
        name = _op_name(what) if kind == "op" else what
        out.append(_Ev(kind, name, pass_, t0, t1, tid))
    for rec in records:
        r = dict(zip(RECORD_FIELDS, rec))
        kind = r["kind"]
        if kind == "job":
            name, pass_ = _split_label(r["label"])
            e = _Ev("job", name, pass_, r["t_start"], r["t_end"], r["thread"])
            e.cache = (r["cache_hits"], r["cache_misses"], r["cache_evictions"])
        elif kind == "wait":
            e = _Ev("wait", r["label"] or "queue.wait", "", r["t_start"], r["t_end"], r["thread"])
        else:
            name, pass_ = _split_label(r["label"])
            e = _Ev("cpu", name, pass_, r["t_start"], r["t_end"], r["thread"])
        e.precision, e.backend, e.status = r["precision"], r["backend"], r["status"]
        e.queue, e.ticket, e.t_submit = r["queue"], r["ticket"], r["t_submit"]
        e.flops, e.bytes = r["flops"], r["bytes"]
        out.append(e)
    return out


def _attach(events):
    """Nesting of the CPU ranges per thread (parent, child_ns) and the owner of
    every job, wait and C range: the innermost Python range around it (a job:
    around its submit time on its submitting thread)."""
    by_thread = {}
    for e in events:
        by_thread.setdefault(e.thread, []).append(e)
    for items in by_thread.values():
        # ranges open outer-first on ties; a job is a point at its submit time,
        # after the ranges opening at that same instant
        keyed = []
        for e in items:
            if e.kind == "job":
                keyed.append((e.t_submit, 1, 0, e))
            else:
                keyed.append((e.t0, 0, -e.t1, e))
        keyed.sort(key=lambda k: k[:3])
        stack = []
        for t, is_job, _, e in keyed:
            if is_job:
                while stack and stack[-1].t1 < t:
                    stack.pop()
                e.parent = stack[-1] if stack else None
                continue
            while stack and stack[-1].t1 <= e.t0:
                stack.pop()
            e.parent = stack[-1] if stack else None
            if e.parent is not None:
                e.parent.child_ns += e.dur
            stack.append(e)
    for e in events:
        if e.kind in _PY_KINDS:
            continue
        o = e.parent
        while o is not None and o.kind not in _PY_KINDS:
            o = o.parent
        e.owner = o
        if o is None:
            continue
        if e.kind == "job":
            o.accel_ns += e.dur
            o.jobs += 1
            o.job_flops += max(e.flops, 0)
            o.job_bytes += max(e.bytes, 0)
            if e.precision:
                o.job_precisions = (o.job_precisions or set()) | {e.precision}
            if o.accel_by_pass is None:
                o.accel_by_pass = {}
            o.accel_by_pass[e.pass_] = o.accel_by_pass.get(e.pass_, 0) + e.dur
        elif e.kind == "wait":
            o.wait_ns += e.dur
        else:
            o.quant_ns += e.dur


# -- the profile ---------------------------------------------------------------------------
class profile:
    """Context manager recording one profile (one at a time per process).

    max_records bounds the C record buffer (jobs + waits + C ranges); past it
    records are dropped and counted (summary()["dropped_records"]).
    enabled=False makes the whole thing a no-op (for A/B timing)."""

    def __init__(self, enabled=True, max_records=1 << 20):
        self.enabled = bool(enabled)
        self.max_records = int(max_records)
        if self.max_records < 1:
            raise ValueError(f"profile: max_records must be >= 1, got {max_records}")
        self._py = []
        self._records = []
        self._dropped = 0
        self._t_start = self._t_stop = 0
        self._cache0 = self._cache1 = None
        self._default_queue = 0
        self._main_thread = threading.main_thread().ident
        self._native_ids = {}      # threading.get_ident() -> OS thread id, for the trace
        self._analysed = None

    # recording
    def __enter__(self):
        global _running
        if not self.enabled:
            return self
        with _state_lock:
            if _running is not None:
                raise RuntimeError("profile: another profile is already recording "
                                   "(profiles do not nest)")
            _running = self
        try:
            _C.profiler_drain()                     # drop stale records of nobody's
            self._py, self._records, self._dropped = [], [], 0
            self._analysed = None
            self._cache0 = dict(_C.cache_stats())
            self._default_queue = _C.default_queue_id()
            _C.profiler_enable(max_records=self.max_records)
            self._t_start = _autograd._now()
            _autograd._profiler = self._py
        except BaseException:
            _C.profiler_disable()
            _running = None
            raise
        return self

    def __exit__(self, *exc):
        global _running
        if not self.enabled:
            return False
        _autograd._profiler = None
        self._t_stop = _autograd._now()
        _C.profiler_disable()
        try:
            # the ops wait for their own jobs, so none of theirs is still running
            self._records, self._dropped = _C.profiler_drain()
            self._cache1 = dict(_C.cache_stats())
            self._native_ids = {t.ident: t.native_id for t in threading.enumerate()}
        finally:
            with _state_lock:
                _running = None
        return False

    # analysis
    def _analyse(self):
        if self._analysed is None:
            if self._t_stop == 0 and self.enabled:
                raise RuntimeError("profile: results are available after the `with` block")
            events = _events_from(self._py, self._records)
            _attach(events)
            self._analysed = events
        return self._analysed

    @property
    def events(self):
        """Every recorded range as a dict (times in ns, CLOCK_MONOTONIC)."""
        out = []
        for e in self._analyse():
            d = {"kind": e.kind, "name": e.label, "op": e.name, "pass": e.pass_,
                 "category": _category(e.kind, e.name), "thread": e.thread,   # get_ident()
                 "t_start_ns": e.t0, "t_end_ns": e.t1, "dur_ns": e.dur}
            if e.kind == "job":
                d.update(queue=e.queue, ticket=e.ticket, t_submit_ns=e.t_submit,
                         precision=e.precision, backend=e.backend, flops=e.flops,
                         bytes=e.bytes, status=e.status, cache_hits=e.cache[0],
                         cache_misses=e.cache[1], cache_evictions=e.cache[2])
            elif e.kind == "wait":
                d.update(queue=e.queue, ticket=e.ticket, status=e.status)
            elif e.kind == "cpu":
                d.update(precision=e.precision, bytes=e.bytes)
            else:
                d.update(self_ns=e.dur - e.child_ns, accel_ns=e.accel_ns, wait_ns=e.wait_ns,
                         quantize_ns=e.quant_ns, jobs=e.jobs, flops=e.job_flops,
                         bytes=e.job_bytes)
            if e.kind in ("job", "wait", "cpu"):
                d["owner"] = e.owner.label if e.owner is not None else None
            out.append(d)
        return out

    def rows(self, sort_by="time"):
        """One dict per (kind, op, pass[, precision, backend]): calls, CPU total /
        self, accelerator, queue-wait and quantize ms, FLOPs, GFLOP/s (on the
        accelerator), bytes, cache hits / misses / evictions; sorted."""
        groups = {}
        for e in self._analyse():
            if e.kind == "job":
                key = ("job", e.name, e.pass_, e.precision, e.backend)
            elif e.kind == "cpu":
                key = ("cpu", e.name, e.pass_, e.precision, None)
            else:
                key = (e.kind, e.name, e.pass_, None, None)
            g = groups.get(key)
            if g is None:
                g = groups[key] = {"calls": 0, "cpu": 0, "self": 0, "accel": 0, "wait": 0,
                                   "quant": 0, "queued": 0, "flops": 0, "bytes": 0,
                                   "cache": [0, 0, 0], "prec": set(), "by_pass": {}}
            g["calls"] += 1
            if e.kind == "job":
                g["accel"] += e.dur
                g["queued"] += max(e.t0 - e.t_submit, 0)
                g["flops"] += max(e.flops, 0)
                g["bytes"] += max(e.bytes, 0)
                for i in range(3):
                    g["cache"][i] += e.cache[i]
                g["by_pass"][e.pass_] = g["by_pass"].get(e.pass_, 0) + e.dur
            elif e.kind in ("cpu", "wait"):
                g["cpu"] += e.dur
                g["self"] += e.dur - e.child_ns
                g["bytes"] += max(e.bytes, 0)
            else:
                g["cpu"] += e.dur
                g["self"] += e.dur - e.child_ns
                g["accel"] += e.accel_ns
                g["wait"] += e.wait_ns
                g["quant"] += e.quant_ns
                g["flops"] += e.job_flops
                g["bytes"] += e.job_bytes
                g["prec"] |= e.job_precisions or set()
                for p, ns in (e.accel_by_pass or {}).items():
                    g["by_pass"][p] = g["by_pass"].get(p, 0) + ns
        rows = []
        for (kind, name, pass_, prec, backend), g in groups.items():
            if kind != "job" and kind != "cpu":
                prec = "+".join(sorted(g["prec"])) or None
            accel_s = g["accel"] / 1e9
            rows.append({
                "name": f"{name}.{pass_}" if pass_ else name, "op": name, "pass": pass_,
                "kind": kind, "where": "accelerator" if kind == "job" else "cpu",
                "category": _category(kind, name), "precision": prec, "backend": backend,
                "calls": g["calls"],
                "cpu_total_ms": g["cpu"] / 1e6, "cpu_self_ms": g["self"] / 1e6,
                "accel_ms": g["accel"] / 1e6, "queue_wait_ms": g["wait"] / 1e6,
                "quantize_ms": g["quant"] / 1e6, "queued_ms": g["queued"] / 1e6,
                "flops": g["flops"],
                "gflops_per_s": g["flops"] / accel_s / 1e9 if accel_s > 0 and g["flops"] else None,
                "bytes": g["bytes"],
                "cache_hits": g["cache"][0], "cache_misses": g["cache"][1],
                "cache_evictions": g["cache"][2],
                "accel_ms_by_pass": {p: ns / 1e6 for p, ns in sorted(g["by_pass"].items())},
            })
        return _sort_rows(rows, sort_by)

    def summary(self, sort_by="time"):
        """Totals of the profile and its rows, JSON-serialisable."""
        events = self._analyse()
        jobs = [e for e in events if e.kind == "job"]
        busy = sum(e.dur for e in jobs)
        wall = max(self._t_stop - self._t_start, 0)
        flops = sum(max(e.flops, 0) for e in jobs)
        top_cpu = sum(e.dur for e in events if e.kind in _PY_KINDS and e.parent is None)
        c0, c1 = self._cache0 or {}, self._cache1 or {}
        return {
            "wall_ms": wall / 1e6,
            "cpu_recorded_ms": top_cpu / 1e6,
            "accelerator_busy_ms": busy / 1e6,
            "accelerator_utilization": busy / wall if wall else None,
            "queue_wait_ms": sum(e.dur for e in events if e.kind == "wait") / 1e6,
            "quantize_ms": sum(e.dur for e in events if e.kind == "cpu") / 1e6,
            "jobs": len(jobs),
            "flops": flops,
            "gflops_per_s": flops / busy if busy else None,   # flops / ns = GFLOP/s
            "bytes": sum(max(e.bytes, 0) for e in jobs),
            "cache": {k: c1.get(k, 0) - c0.get(k, 0) for k in ("hits", "misses", "evictions")},
            "cache_size": c1.get("size"), "cache_capacity": c1.get("capacity"),
            "dropped_records": self._dropped,
            "events": len(events),
            "rows": self.rows(sort_by),
        }

    def table(self, sort_by="time", row_limit=None):
        """A text table of rows(sort_by), at most row_limit rows, then the totals."""
        s = self.summary(sort_by)
        rows = s["rows"][:row_limit] if row_limit else s["rows"]
        head = ("name", "where", "prec", "backend", "calls", "CPU total", "CPU self",
                "queue wait", "accel", "GFLOP", "GFLOP/s", "MB", "cache h/m/e")
        lines = []
        for r in rows:
            cache = (f"{r['cache_hits']}/{r['cache_misses']}/{r['cache_evictions']}"
                     if r["kind"] == "job" else "")
            lines.append((
                r["name"][:34], "accel" if r["where"] == "accelerator" else "cpu",
                r["precision"] or "", r["backend"] or "", str(r["calls"]),
                _ms(r["cpu_total_ms"]), _ms(r["cpu_self_ms"]), _ms(r["queue_wait_ms"]),
                _ms(r["accel_ms"]), f"{r['flops'] / 1e9:.3f}" if r["flops"] else "",
                f"{r['gflops_per_s']:.1f}" if r["gflops_per_s"] else "",
                f"{r['bytes'] / 1e6:.1f}" if r["bytes"] else "", cache))
        widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
                  for i, h in enumerate(head)]
        left = {0, 1, 2, 3}

        def fmt(cells):
            return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        out = [fmt(head), fmt(tuple("-" * w for w in widths))]
        out += [fmt(l) for l in lines]
        util = s["accelerator_utilization"]
        c = s["cache"]
        out.append("")
        out.append(f"times in ms; wall {s['wall_ms']:.2f} ms, accelerator busy "
                   f"{s['accelerator_busy_ms']:.2f} ms"
                   + (f" ({100 * util:.1f}%)" if util is not None else "")
                   + f", {s['jobs']} jobs, {s['flops'] / 1e9:.3f} GFLOP"
                   + (f" at {s['gflops_per_s']:.1f} GFLOP/s" if s["gflops_per_s"] else "")
                   + f"; CPU blocked on the queue {s['queue_wait_ms']:.2f} ms, quantize/convert "
                   f"{s['quantize_ms']:.2f} ms")
        out.append(f"primitive cache: {c['hits']} hits, {c['misses']} misses, "
                   f"{c['evictions']} evictions over the profile"
                   + (f" (size {s['cache_size']}/{s['cache_capacity']})"
                      if s["cache_capacity"] else ""))
        if s["dropped_records"]:
            out.append(f"warning: {s['dropped_records']} C records were dropped (buffer of "
                       f"{self.max_records} records full): totals are incomplete")
        return "\n".join(out)

    # outputs
    def chrome_trace(self):
        """The Chrome trace-event dict {"traceEvents": [...]} (ts, dur in us from the
        profile's start): the CPU threads and each queue's worker as separate tracks,
        a flow arrow from the op that submitted a job to the job."""
        events = self._analyse()
        pid = os.getpid()
        origin = min([self._t_start] + [min(e.t0, e.t_submit) for e in events])

        def us(ns):
            return round((ns - origin) / 1000.0, 3)

        out = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": 0,
                "args": {"name": "edgetrain"}}]
        # records name threads by threading.get_ident(); the trace by OS thread id
        # (threads gone by the end of the profile: _GONE_TID + 1, 2, ...)
        tids = dict(self._native_ids)
        gone = set()
        for e in events:
            if e.thread not in tids:
                gone.add(e.thread)
                tids[e.thread] = _GONE_TID + len(gone)
        threads, queues = set(), set()
        flow = 0
        for e in events:
            if e.kind == "job":
                tid = _ACCEL_TID + e.queue
                queues.add(e.queue)
                args = {"precision": e.precision, "backend": e.backend, "flops": e.flops,
                        "bytes": e.bytes, "queue": e.queue, "ticket": e.ticket,
                        "queued_us": round((e.t0 - e.t_submit) / 1000.0, 3),
                        "gflops_per_s": round(e.flops / e.dur, 3) if e.dur and e.flops > 0
                        else None,
                        "cache_hits": e.cache[0], "cache_misses": e.cache[1],
                        "cache_evictions": e.cache[2], "status": e.status,
                        "submitted_by": e.owner.label if e.owner is not None else None}
                name = e.label + (f" [{e.precision}]" if e.precision else "")
            else:
                tid = tids[e.thread]
                threads.add(e.thread)
                name = e.label
                if e.kind == "wait":
                    args = {"queue": e.queue, "ticket": e.ticket, "status": e.status}
                elif e.kind == "cpu":
                    args = {"precision": e.precision, "bytes": e.bytes}
                else:
                    args = {"self_us": round((e.dur - e.child_ns) / 1000.0, 3)}
                    if e.jobs:
                        args.update(accel_us=round(e.accel_ns / 1000.0, 3),
                                    queue_wait_us=round(e.wait_ns / 1000.0, 3),
                                    flops=e.job_flops, bytes=e.job_bytes, jobs=e.jobs)
                    if e.quant_ns:
                        args["quantize_us"] = round(e.quant_ns / 1000.0, 3)
            out.append({"ph": "X", "name": name, "cat": _category(e.kind, e.name),
                        "pid": pid, "tid": tid, "ts": us(e.t0),
                        "dur": round(max(e.dur, 0) / 1000.0, 3), "args": args})
            if e.kind == "job" and e.owner is not None:
                flow += 1
                out.append({"ph": "s", "name": "submit", "cat": "queue", "id": flow, "pid": pid,
                            "tid": tids[e.owner.thread], "ts": us(e.t_submit)})
                out.append({"ph": "f", "bp": "e", "name": "submit", "cat": "queue", "id": flow,
                            "pid": pid, "tid": tid, "ts": us(e.t0)})
        for i, t in enumerate(sorted(threads, key=lambda t: (t != self._main_thread, tids[t]))):
            label = ("CPU (Python thread)" if t == self._main_thread
                     else f"CPU (thread {tids[t]})" if t not in gone
                     else f"CPU (thread #{tids[t] - _GONE_TID}, ended)")
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tids[t], "ts": 0,
                        "args": {"name": label}})
            out.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tids[t],
                        "ts": 0, "args": {"sort_index": i}})
        for q in sorted(queues):
            label = ("accelerator (queue worker)" if q == self._default_queue
                     else f"accelerator (queue {q} worker)")
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": _ACCEL_TID + q,
                        "ts": 0, "args": {"name": label}})
            out.append({"ph": "M", "name": "thread_sort_index", "pid": pid,
                        "tid": _ACCEL_TID + q, "ts": 0, "args": {"sort_index": 1000 + q}})
        return {"traceEvents": out, "displayTimeUnit": "ms",
                "otherData": {"producer": "edgetrain.profiler",
                              "dropped_records": self._dropped}}

    def export_chrome_trace(self, path):
        """Writes the Chrome trace JSON atomically (open it in ui.perfetto.dev)."""
        data = json.dumps(self.chrome_trace(), separators=(",", ":")).encode("utf-8")
        atomic_write(path, lambda f: f.write(data))

    def figure(self, title=None):
        """The breakdown as a matplotlib Figure (object API, Agg canvas): per op
        category and pass, a CPU bar (own work, quantize/convert, blocked on the
        queue) and an accelerator bar (its jobs, by pass)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        groups = {}
        for e in self._analyse():
            if e.kind not in ("op", "optimizer", "engine"):
                continue   # user ranges contain ops: counted there
            key = (_category(e.kind, e.name), e.pass_ if e.kind == "op" else
                   ("step" if e.kind == "optimizer" else "engine"))
            g = groups.setdefault(key, {"self": 0, "quant": 0, "wait": 0, "accel": {}})
            g["self"] += e.dur - e.child_ns
            g["quant"] += e.quant_ns
            g["wait"] += e.wait_ns
            for p, ns in (e.accel_by_pass or {}).items():
                g["accel"][p] = g["accel"].get(p, 0) + ns
        keys = sorted(groups, key=lambda k: -(groups[k]["self"] + groups[k]["quant"] +
                                              groups[k]["wait"]
                                              + sum(groups[k]["accel"].values())))
        n = max(len(keys), 1)
        fig = Figure(figsize=(11, 1.2 + 0.45 * n))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        h = 0.38
        ys = list(range(len(keys)))[::-1]
        colors = {"self": "#4C72B0", "quant": "#DD8452", "wait": "#C0C0C0"}
        pass_colors = {"fwd": "#55A868", "bwd_data": "#8172B3", "bwd_weight": "#C44E52"}
        used = set()
        for y, k in zip(ys, keys):
            g = groups[k]
            left = 0.0
            for part, label in (("self", "CPU: own work"), ("quant", "CPU: quantize/convert"),
                                ("wait", "CPU: blocked on the queue")):
                v = g[part] / 1e6
                if v > 0:
                    ax.barh(y + h / 2, v, h, left=left, color=colors[part],
                            label=None if label in used else label)
                    used.add(label)
                    left += v
            left = 0.0
            for p, ns in sorted(g["accel"].items()):
                v = ns / 1e6
                label = f"accelerator: {p or 'job'}"
                ax.barh(y - h / 2, v, h, left=left, color=pass_colors.get(p, "#937860"),
                        label=None if label in used else label)
                used.add(label)
                left += v
        ax.set_yticks(ys)
        ax.set_yticklabels([f"{c} {p}".strip() for c, p in keys])
        ax.set_xlabel("time (ms), upper bar CPU, lower bar accelerator")
        s = self.summary()
        util = s["accelerator_utilization"]
        sub = (f"wall {s['wall_ms']:.1f} ms, accelerator busy {s['accelerator_busy_ms']:.1f} ms"
               + (f" ({100 * util:.0f}%)" if util is not None else "")
               + (f", {s['gflops_per_s']:.1f} GFLOP/s" if s["gflops_per_s"] else ""))
        ax.set_title((title + "\n" if title else "") + sub, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        if used:
            ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        return fig

    def save_png(self, path, title=None):
        """Writes the breakdown PNG atomically (needs matplotlib)."""
        fig = self.figure(title)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        data = buf.getvalue()
        atomic_write(path, lambda f: f.write(data))


def _ms(v):
    return f"{v:.3f}" if v else ""


_SORT_KEYS = {
    "time": lambda r: -max(r["cpu_total_ms"], r["accel_ms"]),
    "cpu_total": lambda r: -r["cpu_total_ms"],
    "cpu_self": lambda r: -r["cpu_self_ms"],
    "accel": lambda r: -r["accel_ms"],
    "queue_wait": lambda r: -r["queue_wait_ms"],
    "flops": lambda r: -r["flops"],
    "calls": lambda r: -r["calls"],
    "name": lambda r: r["name"],
}


def _sort_rows(rows, sort_by):
    key = _SORT_KEYS.get(sort_by)
    if key is None:
        raise ValueError(f"profile: sort_by must be one of {', '.join(_SORT_KEYS)}, got "
                         f"{sort_by!r}")
    return sorted(rows, key=lambda r: (key(r), r["name"], r["where"]))


# -- checking a trace -------------------------------------------------------------------------
def validate_chrome_trace(trace):
    """Raises ValueError naming the first problem of a Chrome trace dict (as written
    by export_chrome_trace): required keys, non-negative numeric ts / dur, the
    accelerator tracks' events not overlapping (one worker per queue), flows
    paired. Returns the number of "X" events."""
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise ValueError("chrome trace: expected {'traceEvents': [...]}")
    need = {"X": ("name", "ph", "ts", "dur", "pid", "tid"), "M": ("name", "ph", "pid", "args"),
            "s": ("name", "ph", "ts", "pid", "tid", "id"),
            "f": ("name", "ph", "ts", "pid", "tid", "id")}
    tracks, flows, n = {}, {}, 0
    for i, ev in enumerate(trace["traceEvents"]):
        ph = ev.get("ph")
        if ph not in need:
            raise ValueError(f"chrome trace: event {i} has an unknown phase {ph!r}")
        missing = [k for k in need[ph] if k not in ev]
        if missing:
            raise ValueError(f"chrome trace: event {i} ({ev.get('name')!r}) lacks {missing}")
        for k in ("ts", "dur"):
            if k in ev and (not isinstance(ev[k], (int, float)) or isinstance(ev[k], bool)
                            or ev[k] < 0 or ev[k] != ev[k]):
                raise ValueError(f"chrome trace: event {i} ({ev['name']!r}) has {k}={ev[k]!r}")
        if ph == "X":
            n += 1
            tracks.setdefault((ev["pid"], ev["tid"]), []).append(ev)
        elif ph in "sf":
            flows.setdefault(ev["id"], []).append(ph)
    for (pid, tid), evs in tracks.items():
        if tid < _ACCEL_TID:
            continue
        evs.sort(key=lambda e: e["ts"])
        for a, b in zip(evs, evs[1:]):
            if a["ts"] + a["dur"] > b["ts"] + 1e-3:   # ts/dur rounded to 1 ns
                raise ValueError(f"chrome trace: accelerator events overlap on tid {tid}: "
                                 f"{a['name']!r} at {a['ts']} for {a['dur']} us and "
                                 f"{b['name']!r} at {b['ts']}")
    for fid, phs in flows.items():
        if sorted(phs) != ["f", "s"]:
            raise ValueError(f"chrome trace: flow {fid} has phases {phs}, expected one s and one f")
    return n
