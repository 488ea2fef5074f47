"""Child-process fuzzing harness shared by fuzz/fuzz_*.py.

Why a child process: a bug in C (a segfault, an abort, a runaway allocation)
kills the process that hits it, so the loop that generates and runs inputs
lives in a child and the parent watches it:

    parent (run_target)                      child (child_main)
    ------------------------------------     ------------------------------------
    spawn child(seed, seconds, limits)  -->  loop until its deadline:
                                               input = target.generate(rng)
                                               write it to <workdir>/current<sfx>
                                               target.execute(that file)
                                               classify the outcome
                                               every ~1 s: stats json (atomic)
    returncode < 0 (signal) or > 0      -->  the input of the crash is the last
      -> copy <workdir>/current<sfx> to        <workdir>/current<sfx>: it is written
         crashes/, restart with seed+1         BEFORE each execution
    stats file not updated for hang_s   -->  a hang: killed, input kept likewise

Outcomes of one execution:
  ok        target.execute returned (the input was valid; the target checks
            what it got back)
  clean     it raised one of target.clean whose message names the operation
            (target.message_prefix): a "clean exception"
  finding   anything else: another exception type (KeyError, OverflowError,
            MemoryError under the child's address-space limit, ...), a clean
            type whose message does not name the operation, a peak-RSS jump
            above target.rss_limit_mb (the input made the reader allocate
            far more than it holds), a hang or a crash of the child.
Findings keep their input under <out>/crashes/ (the first few per signature:
exception type + innermost frame), with a .txt beside it holding the
traceback; `python fuzz/fuzz_<name>.py --replay FILE` runs one input again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "fuzz"
KEEP_PER_SIGNATURE = 3          # inputs kept per finding signature
STATS_EVERY_S = 1.0             # child stats cadence (also the hang heartbeat)


class Target:
    """One fuzz target. Subclasses set the class attributes and implement
    generate() and execute(); setup() runs once in the child (imports)."""
    name = "?"
    script = None                # path of the fuzz_*.py that defines it (for the child)
    suffix = ".bin"
    clean: tuple = (ValueError,)
    message_prefix: str | None = None
    mem_limit_mb = 4096          # RLIMIT_AS of the child: a huge allocation fails fast
    rss_limit_mb = 1024          # peak-RSS growth over the first input: a finding (None: off)
    clean_names: list | None = None   # names of `clean` for the record, when it is set in setup()
    hang_s = 120.0               # one execution longer than this: a hang

    def setup(self):
        pass

    def generate(self, rng: random.Random) -> tuple[bytes, str]:
        """-> (input bytes, label of how it was made, e.g. the mutator)."""
        raise NotImplementedError

    def execute(self, path: str):
        raise NotImplementedError

    # -- classification -------------------------------------------------------
    def classify(self, exc: BaseException) -> str:
        if not isinstance(exc, self.clean):
            return "finding"
        if self.message_prefix and self.message_prefix not in str(exc):
            return "finding"
        return "clean"


# ----------------------------------------------------------------------------
def _type_name(exc) -> str:
    t = type(exc)
    mod = t.__module__
    return t.__qualname__ if mod in ("builtins", None) else f"{mod}.{t.__qualname__}"


def _signature(exc) -> str:
    """exception type + the innermost frame: one signature per distinct bug."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
    return f"{_type_name(exc)}@{where}"


def _write_json(path, obj):
    """tmp + os.replace: a reader never sees half a file (no fsync: scratch)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _safe_name(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:80]


def _keep_input(crash_dir: Path, target: Target, sig: str, data: bytes, note: str,
                kept: dict) -> str | None:
    n = kept.get(sig, 0)
    if n >= KEEP_PER_SIGNATURE:
        return None
    kept[sig] = n + 1
    crash_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(data).hexdigest()[:12]
    base = crash_dir / f"{target.name}-{_safe_name(sig)}-{h}"
    (base.parent / (base.name + target.suffix)).write_bytes(data)
    (base.parent / (base.name + ".txt")).write_text(note)
    return str(base.parent / (base.name + target.suffix))


# ----------------------------------------------------------------------------
def child_main(target: Target, seed: int, seconds: float, workdir: str, stats_path: str,
               crash_dir: str):
    """The fuzz loop (runs in the child). Exits 0 at its deadline."""
    target.setup()
    rng = random.Random(seed)
    cur = os.path.join(workdir, "current" + target.suffix)
    crash_dir = Path(crash_dir)
    stats = {"seed": seed, "executions": 0, "ok": 0, "clean": 0, "findings": 0,
             "exception_types": {}, "labels": {}, "finding_signatures": {},
             "kept": [], "done": False}
    kept: dict = {}
    rss0 = None
    t_end = time.monotonic() + seconds
    next_stats = 0.0
    while True:
        now = time.monotonic()
        if now >= next_stats:
            _write_json(stats_path, stats)
            next_stats = now + STATS_EVERY_S
        if now >= t_end:
            break
        data, label = target.generate(rng)
        with open(cur, "wb") as f:          # before executing: a crash leaves it here
            f.write(data)
        outcome, exc = "ok", None
        try:
            target.execute(cur)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:          # noqa: BLE001 - classified below
            exc = e
            outcome = target.classify(e)
            name = _type_name(e)
            stats["exception_types"][name] = stats["exception_types"].get(name, 0) + 1
        stats["executions"] += 1
        stats[outcome if outcome != "finding" else "findings"] += 1
        lab = stats["labels"].setdefault(label, {"ok": 0, "clean": 0, "finding": 0})
        lab[outcome] += 1
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024   # MiB (Linux: KiB)
        if rss0 is None:
            rss0 = rss
        elif target.rss_limit_mb is not None and rss - rss0 > target.rss_limit_mb:
            # the peak only grows: report it once, then move the bar
            sig = f"rss+{rss - rss0}MiB"
            outcome = "finding"
            stats["findings"] += 1
            stats["finding_signatures"][sig] = stats["finding_signatures"].get(sig, 0) + 1
            p = _keep_input(crash_dir, target, sig, data,
                            f"label: {label}\npeak RSS grew by {rss - rss0} MiB on this input\n",
                            kept)
            if p:
                stats["kept"].append(p)
            rss0 = rss
        if exc is not None and target.classify(exc) == "finding":
            sig = _signature(exc)
            stats["finding_signatures"][sig] = stats["finding_signatures"].get(sig, 0) + 1
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            p = _keep_input(crash_dir, target, sig, data, f"label: {label}\n{tb}", kept)
            if p:
                stats["kept"].append(p)
        if outcome == "finding":
            next_stats = 0.0       # recorded at once: a crash next must not lose it
    stats["done"] = True
    _write_json(stats_path, stats)


def replay(target: Target, path: str) -> int:
    """Runs one input; prints the outcome. 0: ok or clean, 1: a finding."""
    target.setup()
    try:
        target.execute(path)
    except BaseException as e:  # noqa: BLE001
        kind = target.classify(e)
        print(f"{kind}: {_type_name(e)}: {e}")
        if kind == "finding":
            traceback.print_exc()
            return 1
        return 0
    print("ok: the input was accepted")
    return 0


# ----------------------------------------------------------------------------
def under_asan() -> bool:
    """True in `make test-asan`'s processes (libasan preloaded)."""
    return "libasan" in os.environ.get("LD_PRELOAD", "")


def _limits(mem_limit_mb):
    # No address-space cap under ASan: its runtime reserves ~15 TiB of shadow
    # address space at start-up and aborts under any RLIMIT_AS. Its allocator
    # stands in for the cap there: allocator_may_return_null=1 (set by
    # tests/sanitizers/run.sh) makes a huge request return NULL, the
    # MemoryError the fuzzers expect.
    mem_limit_mb = None if under_asan() else mem_limit_mb

    def apply():
        os.setpgrp()     # its own process group: killed as a whole on a hang
        if mem_limit_mb:
            b = int(mem_limit_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (b, b))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # no core files
    return apply


def _read_stats(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _merge(total, st):
    for k in ("executions", "ok", "clean", "findings"):
        total[k] += st.get(k, 0)
    for k, v in st.get("exception_types", {}).items():
        total["exception_types"][k] = total["exception_types"].get(k, 0) + v
    for k, v in st.get("finding_signatures", {}).items():
        total["finding_signatures"][k] = total["finding_signatures"].get(k, 0) + v
    for lab, d in st.get("labels", {}).items():
        t = total["labels"].setdefault(lab, {"ok": 0, "clean": 0, "finding": 0})
        for k, v in d.items():
            t[k] += v
    total["kept"].extend(st.get("kept", []))


def run_target(target: Target, seconds: float, seed: int, out_dir=RESULTS,
               log=print) -> dict:
    """Runs `target` in child processes for `seconds` of wall clock; returns its
    record (executions, outcomes, exception types, findings with kept inputs)."""
    out_dir = Path(out_dir)
    crash_dir = out_dir / "crashes"
    workdir = tempfile.mkdtemp(prefix=f"edgetrain-fuzz-{target.name}-")
    total = {"target": target.name, "seed": seed, "executions": 0, "ok": 0, "clean": 0,
             "findings": 0, "crashes": 0, "hangs": 0, "children": 0,
             "exception_types": {}, "finding_signatures": {}, "labels": {}, "kept": [],
             "crash_inputs": [], "clean_exceptions": target.clean_names or sorted(c.__qualname__ for c in target.clean),
             "message_must_contain": target.message_prefix,
             "mem_limit_mb": target.mem_limit_mb, "rss_limit_mb": target.rss_limit_mb}
    t0 = time.monotonic()
    end = t0 + seconds
    i = 0
    try:
        while end - time.monotonic() > 0.5:
            left = end - time.monotonic()
            child_seed = seed + i
            stats_path = os.path.join(workdir, f"stats-{i}.json")
            cmd = [sys.executable, str(target.script), "--child", "--seed", str(child_seed),
                   "--seconds", f"{left:.3f}", "--workdir", workdir, "--stats", stats_path,
                   "--crash-dir", str(crash_dir)]
            logf = open(os.path.join(workdir, f"child-{i}.log"), "wb")
            p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                 preexec_fn=_limits(target.mem_limit_mb), cwd=str(REPO))
            hung = overran = False
            start = time.monotonic()
            while p.poll() is None:
                time.sleep(0.25)
                now = time.monotonic()
                try:
                    beat = os.stat(stats_path).st_mtime
                    idle = time.time() - beat
                except OSError:
                    idle = now - start          # not started yet (imports)
                if idle > target.hang_s:
                    hung = True
                elif now > end + 60:
                    overran = True
                if hung or overran:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            logf.close()
            rc = p.returncode
            st = _read_stats(stats_path)
            if st:
                _merge(total, st)
            total["children"] += 1
            if hung or (rc != 0 and not overran):
                kind = "hang" if hung else (f"signal {signal.Signals(-rc).name}" if rc < 0
                                            else f"exit status {rc}")
                total["crashes" if not hung else "hangs"] += 1
                total["findings"] += 1
                cur = os.path.join(workdir, "current" + target.suffix)
                data = Path(cur).read_bytes() if os.path.exists(cur) else b""
                crash_dir.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256(data).hexdigest()[:12]
                dst = crash_dir / f"{target.name}-{_safe_name(kind)}-{h}{target.suffix}"
                dst.write_bytes(data)
                tail = Path(os.path.join(workdir, f"child-{i}.log")).read_bytes()[-4000:]
                (crash_dir / f"{dst.stem}.txt").write_bytes(
                    f"{kind} (child seed {child_seed})\n".encode() + tail)
                total["crash_inputs"].append({"kind": kind, "input": str(dst),
                                              "child_seed": child_seed})
                sig = f"child {kind}"
                total["finding_signatures"][sig] = total["finding_signatures"].get(sig, 0) + 1
                log(f"[{target.name}] child {i} {kind}: input kept as {dst}")
            i += 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total["duration_s"] = round(time.monotonic() - t0, 1)
    total["execs_per_s"] = round(total["executions"] / max(total["duration_s"], 1e-9), 1)
    return total


# ----------------------------------------------------------------------------
def machine() -> dict:
    """What ran the fuzzers: enough to compare execution rates between runs."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    import numpy
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
            "os": platform.platform(), "python": platform.python_version(),
            "numpy": numpy.__version__, "nice": os.nice(0),
            "loadavg_at_start": list(os.getloadavg())}


def main(target: Target, argv=None):
    """Command line of every fuzz_*.py: a standalone run (parent), --child (the
    loop, started by the parent) or --replay FILE."""
    ap = argparse.ArgumentParser(description=f"fuzz target {target.name}")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS), help="record / crashes directory")
    ap.add_argument("--replay", metavar="FILE")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--stats", help=argparse.SUPPRESS)
    ap.add_argument("--crash-dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.replay:
        return replay(target, a.replay)
    if a.child:
        child_main(target, a.seed, a.seconds, a.workdir, a.stats, a.crash_dir)
        return 0
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(2 ** 32)
    rec = run_target(target, a.seconds, seed, a.out)
    print(json.dumps({k: v for k, v in rec.items() if k != "labels"}, indent=1))
    return 1 if rec["findings"] else 0
