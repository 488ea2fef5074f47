"""Run every fuzz target for --minutes M each (wall clock), one after the
other, and write the record (JSON + markdown) to benchmarks/results/fuzz/.

    python fuzz/run_all.py --minutes 10            # `make fuzz` (FUZZ_MINUTES=10)
    python fuzz/run_all.py --minutes 1 --targets idx,checkpoint --out /tmp/f

Targets: idx (fuzz/fuzz_idx.py), checkpoint (fuzz/fuzz_checkpoint.py), ops
(fuzz/fuzz_ops.py: two fuzzers, hypothesis properties then random valid and
malformed calls; each gets the full --minutes, so ops takes twice as long). Each runs in child processes (a crash is
seen, its input kept under <out>/crashes/). The record states the machine,
the seeds, executions, the exception types seen, findings, crashes and hangs
per target, and is written atomically (temp file, fsync, rename): record.json
and record.md. Exit status 1 when any target had a finding.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz import harness  # noqa: E402

TARGETS = ("idx", "checkpoint", "ops")


def _without_note(args):
    """The command line for the record; the note is recorded on its own."""
    out, skip = [], False
    for a in args:
        if skip:
            out.append("...")
            skip = False
        elif a == "--note":
            out.append(a)
            skip = True
        elif a.startswith("--note="):
            out.append("--note=...")
        else:
            out.append(a)
    return out


def _atomic_write_text(path, text):
    from edgetrain.checkpoint import atomic_write
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _label_table(labels, top=40):
    rows = sorted(labels.items(), key=lambda kv: -sum(kv[1].values()))[:top]
    out = ["| input kind | executions | ok | clean exception | finding |", "|---|---:|---:|---:|---:|"]
    for lab, d in rows:
        out.append(f"| {lab} | {sum(d.values())} | {d['ok']} | {d['clean']} | {d['finding']} |")
    if len(labels) > top:
        out.append(f"| ({len(labels) - top} more kinds in record.json) | | | | |")
    return out


def markdown(rec) -> str:
    m = rec["machine"]
    lines = [
        "# Fuzzing record (issue 6, section 2)",
        "",
        f"Run {rec['started']} -> {rec['finished']} (UTC), `{rec['command']}`, master seed "
        f"{rec['seed']}, {rec['minutes']} min per fuzzer (idx, checkpoint, ops-properties, "
        "ops-calls).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}, Python "
        f"{m['python']}, numpy {m['numpy']}, nice {m['nice']}, load average at start "
        f"{', '.join(f'{v:.2f}' for v in m['loadavg_at_start'])} (shared machine).",
        "",
    ] + ([f"Note: {rec['note']}", ""] if rec.get("note") else []) + [
        "| target | duration | executions | exec/s | accepted | clean exceptions | findings | crashes | hangs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rec["targets"]:
        acc = r.get("ok", "-")
        cln = r.get("clean", "-")
        lines.append(f"| {r['target']} | {r['duration_s']:.0f} s | {r['executions']} | "
                     f"{r['execs_per_s']} | {acc} | {cln} | {r['findings']} | {r['crashes']} | "
                     f"{r['hangs']} |")
    lines += ["", f"**Total findings: {rec['findings']}, crashes: {rec['crashes']}.**", ""]
    for r in rec["targets"]:
        lines += [f"## {r['target']}", ""]
        if r["target"] == "ops-properties":
            lines += [f"tests/test_properties.py ({r['tests']} properties) under the long "
                      f"hypothesis profile: {r['rounds']} rounds, {r['executions']} examples "
                      f"({r['invalid_examples']} more rejected by assume), "
                      f"{r['failing_examples']} failing.", "",
                      "| hypothesis seed | examples per test | examples | seconds | pytest rc |",
                      "|---:|---:|---:|---:|---:|"]
            for x in r["round_log"]:
                lines.append(f"| {x['hypothesis_seed']} | {x['examples_per_test']} | "
                             f"{x['examples']} | {x['seconds']} | {x['rc']} |")
        else:
            lines += [f"Clean exceptions: {', '.join(r['clean_exceptions'])}"
                      + (f" (message naming `{r['message_must_contain']}`)"
                         if r.get("message_must_contain") else "")
                      + f"; child address-space limit {r['mem_limit_mb']} MiB"
                      + (f", peak-RSS growth limit {r['rss_limit_mb']} MiB" if r.get("rss_limit_mb")
                         else "") + f"; {r['children']} child process(es), seed {r['seed']}.", "",
                      "Exception types seen: " + (", ".join(
                          f"{k} ({v})" for k, v in sorted(r["exception_types"].items(),
                                                         key=lambda kv: -kv[1])) or "none") + ".",
                      ""]
            lines += _label_table(r["labels"])
        if r.get("finding_signatures"):
            lines += ["", "Findings:", ""]
            for sig, n in r["finding_signatures"].items():
                lines.append(f"- `{sig}`: {n}")
        kept = r.get("kept", []) + [c["input"] for c in r.get("crash_inputs", [])]
        if kept:
            lines += ["", "Kept inputs (reproduce with `python fuzz/fuzz_<target>.py --replay FILE`):", ""]
            lines += [f"- {os.path.relpath(k, harness.REPO)}" for k in kept]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="wall clock per target")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=str(harness.RESULTS))
    ap.add_argument("--note", default="", help="free text for the record (e.g. the code state)")
    a = ap.parse_args(argv)
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        ap.error(f"unknown target(s) {bad}; known: {', '.join(TARGETS)}")
    if a.minutes <= 0:
        ap.error("--minutes must be positive")
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(2 ** 31)
    os.makedirs(a.out, exist_ok=True)
    secs = a.minutes * 60.0
    now = lambda: datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
    rec = {"started": now(), "seed": seed, "minutes": a.minutes, "targets": [], "note": a.note,
           "machine": harness.machine(),
           "command": " ".join([os.path.relpath(sys.argv[0], harness.REPO)]
                               + _without_note(argv if argv is not None else sys.argv[1:]))}

    def log(msg):
        print(msg, flush=True)

    for i, name in enumerate(targets):
        t_seed = seed + 1000003 * i
        log(f"[run_all] {name}: {a.minutes * (2 if name == 'ops' else 1)} min, seed {t_seed}")
        t0 = time.monotonic()
        if name == "idx":
            from fuzz import fuzz_idx
            recs = [harness.run_target(fuzz_idx.TARGET, secs, t_seed, a.out, log)]
        elif name == "checkpoint":
            from fuzz import fuzz_checkpoint
            recs = [harness.run_target(fuzz_checkpoint.TARGET, secs, t_seed, a.out, log)]
        else:
            from fuzz import fuzz_ops
            # two fuzzers in one target (properties, calls): each gets M minutes
            recs = list(fuzz_ops.run(2 * secs, t_seed, a.out, log))
        for r in recs:
            r.setdefault("hangs", 0)
            r.setdefault("crashes", 0)
            rec["targets"].append(r)
            log(f"[run_all]   {r['target']}: {r['executions']} executions in {r['duration_s']} s, "
                f"{r['findings']} finding(s), {r['crashes']} crash(es)")
        log(f"[run_all] {name} done in {time.monotonic() - t0:.0f} s")
    rec["finished"] = now()
    rec["findings"] = sum(r["findings"] for r in rec["targets"])
    rec["crashes"] = sum(r["crashes"] for r in rec["targets"])
    _atomic_write_text(os.path.join(a.out, "record.json"), json.dumps(rec, indent=1, sort_keys=True))
    _atomic_write_text(os.path.join(a.out, "record.md"), markdown(rec))
    log(f"[run_all] record: {os.path.join(a.out, 'record.md')} ({rec['findings']} finding(s))")
    return 1 if rec["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
