"""Fuzz target: the ops of the C core, two halves of one time budget.

    python fuzz/fuzz_ops.py --seconds 600
    python fuzz/fuzz_ops.py --replay crashes/ops-calls-F.json     # one call again
    python fuzz/fuzz_ops.py --calls-only --seconds 60               # second half only

1. properties: tests/test_properties.py under the "long" hypothesis profile
   (random, many examples), in child pytest processes with fresh seeds
   (--hypothesis-seed) until the half is spent. Executions = hypothesis
   examples run (from --hypothesis-show-statistics). A failing property is a
   finding (pytest's output is kept; `pytest --hypothesis-seed=S` reproduces
   it); a child killed by a signal is a crash (faulthandler's traceback kept).
2. calls: random valid and malformed calls into every function of
   edgetrain._C and edgetrain.nn.functional (fuzz/ops_calls.py), INCLUDING
   the hostile ints that ask for huge or overflowing sizes (2^31, 2^62, 2^64,
   ...), in the harness child under a 4 GiB address-space limit (a runaway
   allocation fails there instead of exhausting the machine). Clean:
   fuzz.ops_calls.clean_exceptions(); besides, _C must never accept a
   non-contiguous or misaligned array. Each call is kept as JSON before it
   runs, so a crash leaves its input.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import harness  # noqa: E402

PROPERTIES = harness.REPO / "tests" / "test_properties.py"
# "- 150 passing, 0 failing, and 8 invalid test cases" (hypothesis 6.1xx;
# older versions said "150 passing examples, 0 failing examples, 8 invalid examples")
_STAT = re.compile(r"(\d+) passing(?: examples?)?, (\d+) failing(?: examples?)?,(?: and)? "
                   r"(\d+) invalid")


class OpsCallsTarget(harness.Target):
    name = "ops-calls"
    script = os.path.abspath(__file__)
    suffix = ".json"
    mem_limit_mb = 4096
    rss_limit_mb = None          # genuinely big outputs are legitimate here
    clean_names = ["EdgetrainError", "ValueError", "TypeError", "IndexError",
                   "NotImplementedError", "OverflowError", "MemoryError"]

    def setup(self):
        import numpy as np
        from edgetrain import _C
        from fuzz import ops_calls
        self.np, self.ops_calls = np, ops_calls
        self.backends = _C.backends()
        self.clean = ops_calls.clean_exceptions()
        warnings.simplefilter("ignore")      # fallback warnings of blas int8 etc.
        np.seterr(all="ignore")

    def generate(self, rng):
        spec = self.ops_calls.make_call(rng, self.backends, huge=True)
        label = spec["fn"] + ("" if spec["mutated"] else " (valid)")
        return json.dumps(spec).encode(), label

    def execute(self, path):
        with open(path) as f:
            spec = json.load(f)
        self.ops_calls.run_call(spec)
        if spec["fn"].startswith("_C."):
            for a in spec["args"]:
                if isinstance(a, dict) and "a" in a:
                    arr = self.ops_calls.build(a)
                    assert arr.flags.c_contiguous and arr.flags.aligned, \
                        f"{spec['fn']} accepted a non-contiguous or misaligned array"


TARGET = OpsCallsTarget()


def run_properties(seconds, seed, out_dir, log=print, examples=None):
    """Rounds of the property tests (long profile) for `seconds`; -> record."""
    out_dir = harness.Path(out_dir)
    rec = {"target": "ops-properties", "seed": seed, "rounds": 0, "executions": 0,
           "failing_examples": 0, "invalid_examples": 0, "findings": 0, "crashes": 0,
           "hangs": 0, "round_log": [], "kept": [], "tests": 0}
    t0 = time.monotonic()
    end = t0 + seconds
    n = examples or 60            # examples per test in the first round; then sized to fit
    i = 0
    while True:
        left = end - time.monotonic()
        if left < 20:
            break
        s = seed + i
        env = dict(os.environ, HYPOTHESIS_PROFILE="long", EDGETRAIN_HYPOTHESIS_EXAMPLES=str(n),
                   PYTHONFAULTHANDLER="1")
        cmd = [sys.executable, "-m", "pytest", "-q", str(PROPERTIES), "-p", "no:cacheprovider",
               f"--hypothesis-seed={s}", "--hypothesis-show-statistics", "-W",
               "ignore::RuntimeWarning"]
        t1 = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=str(harness.REPO), env=env, capture_output=True,
                               text=True, timeout=left + 60)
            rc, out = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:      # ran past the budget: stop, not a finding
            rc, out = None, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        dt = time.monotonic() - t1
        passing = failing = invalid = 0
        for m in _STAT.finditer(out):
            passing += int(m.group(1))
            failing += int(m.group(2))
            invalid += int(m.group(3))
        tests = len(re.findall(r"^tests/test_properties\.py::", out, re.M))
        rec["rounds"] += 1
        rec["tests"] = max(rec["tests"], tests)
        rec["executions"] += passing + failing
        rec["failing_examples"] += failing
        rec["invalid_examples"] += invalid
        rec["round_log"].append({"hypothesis_seed": s, "examples_per_test": n, "rc": rc,
                                 "seconds": round(dt, 1), "examples": passing + failing})
        if rc not in (0, None):
            kind = "failed" if rc in (1,) else (f"signal {-rc}" if rc < 0 else f"exit status {rc}")
            rec["findings"] += 1
            if rc < 0:
                rec["crashes"] += 1
            (out_dir / "crashes").mkdir(parents=True, exist_ok=True)
            dst = out_dir / "crashes" / f"ops-properties-seed{s}.txt"
            dst.write_text(f"{' '.join(cmd)}\nHYPOTHESIS_PROFILE=long "
                           f"EDGETRAIN_HYPOTHESIS_EXAMPLES={n}: {kind}\n\n{out[-20000:]}")
            rec["kept"].append(str(dst))
            log(f"[ops-properties] round {i} (seed {s}) {kind}: output kept as {dst}")
        if rc is None:
            break
        # next round: about min(the time left, 3 minutes), scaled from this one
        left = end - time.monotonic()
        per_example = dt / max(n, 1)
        n = int(max(10, min(2000, min(left - 15, 180) / max(per_example, 1e-3))))
        i += 1
    rec["duration_s"] = round(time.monotonic() - t0, 1)
    rec["execs_per_s"] = round(rec["executions"] / max(rec["duration_s"], 1e-9), 1)
    return rec


def run(seconds, seed, out_dir=harness.RESULTS, log=print, split=0.5):
    """Both halves: -> (properties record, calls record)."""
    props = run_properties(seconds * split, seed, out_dir, log)
    left = max(1.0, seconds - props["duration_s"])
    calls = harness.run_target(TARGET, left, seed, out_dir, log)
    return props, calls


if __name__ == "__main__":
    if "--calls-only" in sys.argv:
        sys.argv.remove("--calls-only")
        sys.exit(harness.main(TARGET))
    if any(a in sys.argv for a in ("--child", "--replay")):
        sys.exit(harness.main(TARGET))
    import argparse
    import random
    ap = argparse.ArgumentParser(description="fuzz target ops (properties + calls)")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=str(harness.RESULTS))
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(2 ** 31)
    props, calls = run(a.seconds, seed, a.out)
    print(json.dumps({"properties": props,
                      "calls": {k: v for k, v in calls.items() if k != "labels"}}, indent=1))
    sys.exit(1 if props["findings"] or calls["findings"] else 0)
