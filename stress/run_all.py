"""The stress tests of issue 6 (`make stress`): the kill / resume test (100 SIGKILLs)
and the long run (20,000 lenet int8 steps), one after the other, each in its own
process (the long run measures its own resident set), each writing its record to
benchmarks/results/stress/; then run_all.{json,md} summarising both.

    .venv/bin/python stress/run_all.py                 # ~15-25 min on 2 shared cores
    .venv/bin/python stress/run_all.py --kills 5 --steps 2000   # a quick look

Exits 1 when either test fails its rules (see the records for which).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stresslib  # noqa: E402
from stresslib import REPO, RESULTS, child_env  # noqa: E402

HERE = Path(__file__).resolve().parent


def run_script(name, args, out_dir):
    t = time.monotonic()
    cmd = [sys.executable, str(HERE / name), *args, "--out-dir", str(out_dir)]
    print("$ " + " ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd, cwd=REPO, env=child_env())
    return rc, time.monotonic() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--summary-only", action="store_true",
                   help="run nothing: rewrite run_all.{json,md} from the records in --out-dir")
    a = p.parse_args(argv)
    out = Path(a.out_dir)
    results = {}
    if a.summary_only:
        rc_k = rc_l = 0
        s_k = s_l = float("nan")
    else:
        rc_k, s_k = run_script("kill_resume.py",
                               ["--kills", str(a.kills), "--seed", str(a.seed)], out)
        rc_l, s_l = run_script("long_run.py", ["--steps", str(a.steps)], out)
    for name, rc, secs in (("kill_resume", rc_k, s_k), ("long_run", rc_l, s_l)):
        try:
            rec = json.loads((out / f"{name}.json").read_text())
        except (OSError, ValueError):
            rec = None
        results[name] = {"exit": rc, "seconds": rec.get("seconds") if rec else None,
                         "pass": bool(rec and rec.get("pass") and rc == 0)}
        if rec:
            if name == "kill_resume":
                results[name].update({k: rec[k] for k in (
                    "kills", "kills_during_checkpoint_write", "runs_completed",
                    "runs_equal_to_uninterrupted", "failures")})
            else:
                results[name].update({k: rec.get(k) for k in (
                    "steps", "rss_growth_percent", "rss_peak_growth_percent",
                    "heap_in_use_growth_kib", "median_step_ms_early", "median_step_ms_late",
                    "late_over_early", "median_step_ms_fresh", "late_over_fresh")})
    summary = {"pass": all(r["pass"] for r in results.values()), "tests": results,
               "from_records_only": a.summary_only, "machine": stresslib.machine()}
    k, lr = results["kill_resume"], results["long_run"]
    ok = {True: "PASS", False: "FAIL"}
    md = ["# Stress tests (issue 6.4 / 6.6): `make stress`", ""]
    if "kills" in k:
        md.append(f"- kill / resume: **{ok[k['pass']]}**: {k['kills']} SIGKILLs, "
                  f"{k['kills_during_checkpoint_write']} during a checkpoint write; "
                  f"{k['runs_equal_to_uninterrupted']}/{k['runs_completed']} completed runs "
                  f"equal to the uninterrupted one; {k['seconds']} s "
                  "([kill_resume.md](kill_resume.md))")
    else:
        md.append(f"- kill / resume: **FAIL** (exit {k['exit']}, no record)")
    if "steps" in lr:
        speed = (f"median step of the last 1000 {lr['median_step_ms_late']:.2f} ms vs "
                 f"{lr['median_step_ms_fresh']:.2f} ms for a fresh run's steps 1000-2000 "
                 f"timed in turns ({lr['late_over_fresh']:.3f}x; vs this run's own steps "
                 f"1000-2000: {lr['late_over_early']:.3f}x)"
                 if lr.get("late_over_fresh") is not None else
                 f"median step {lr['median_step_ms_early']:.2f} -> "
                 f"{lr['median_step_ms_late']:.2f} ms ({lr['late_over_early']:.3f}x)")
        md.append(f"- long run: **{ok[lr['pass']]}**: {lr['steps']} lenet int8 steps, RSS "
                  f"growth {lr['rss_growth_percent']:+.3f}% (peak "
                  f"{lr['rss_peak_growth_percent']:+.3f}%), heap in use "
                  f"{lr['heap_in_use_growth_kib']:+d} KiB; {speed}; {lr['seconds']} s "
                  "([long_run.md](long_run.md))")
    else:
        md.append(f"- long run: **FAIL** (exit {lr['exit']}, no record)")
    md += ["", stresslib.machine_md(summary["machine"]).rstrip(), ""]
    stresslib.write_record("run_all", summary, "\n".join(md), out)
    print("\n".join(md))
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
