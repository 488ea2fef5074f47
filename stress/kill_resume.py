"""Crash safety of `edgetrain train` checkpoints (issue 6.4): SIGKILL a training
run at random moments, many times, and resume it every time.

    .venv/bin/python stress/kill_resume.py --kills 100

A small lenet int8 run on the MNIST 10k subset (2000 training images, 3 epochs,
batch 64: 96 steps) checkpoints every 3 steps (--checkpoint-every 3). Each cycle
starts it (fresh, or with --resume once a checkpoint exists) and SIGKILLs it:

- random: after a random delay from the start (start-up, loading, training,
  evaluation, any file write);
- write:  the moment the k-th new checkpoint temporary file (.checkpoint.et.*.tmp)
  appears, or up to 3 ms later: during a checkpoint write (serialising, writing,
  fsync) -- the temporary file left behind proves the write was cut;
- after:  the moment checkpoint.et is replaced for the k-th time (the directory
  fsync, metrics.jsonl / curves.png, the next steps).

After every kill: checkpoint.et (once one exists) loads -- the SHA-256 in the file
matches -- and never moves backwards; no file but checkpoint.et, metrics.jsonl,
curves.png and temporaries is there; every line of metrics.jsonl parses; a
temporary file left by a cut write is never taken for the checkpoint (the next
--resume must start from checkpoint.et's position, which its "resuming" line
shows, and remove the temporary). A run that completes is compared, bit for bit
(weights, optimizer state, RNG state, metrics), with an uninterrupted run without
--checkpoint-every; then a new run starts, until --kills kills are done; the last
run is finished without a kill and compared too.

Writes benchmarks/results/stress/kill_resume.{json,md} (atomically) unless
--no-record; exits 1 if any check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stresslib  # noqa: E402  (puts this checkout first on sys.path)
from stresslib import REPO, child_env  # noqa: E402

import numpy as np  # noqa: E402

import edgetrain as et  # noqa: E402

CKPT = "checkpoint.et"
EXPECTED_FILES = {CKPT, "metrics.jsonl", "curves.png"}
MODES = (("random", 0.4), ("write", 0.4), ("after", 0.2))
POLL_S = 0.0005                  # how often the watcher looks at the run directory
CHILD_TIMEOUT_S = 600            # a run that hangs this long is a failure


def train_args(data, out, cfg, resume=False):
    if resume:   # the options come from the checkpoint (--checkpoint-every included)
        return ["train", "--out", str(out), "--resume", "--data-dir", str(data),
                "--no-progress"]
    args = ["train", "--model", "lenet", "--data", "mnist", "--data-dir", str(data),
            "--precision", cfg["precision"], "--epochs", str(cfg["epochs"]),
            "--batch-size", str(cfg["batch_size"]), "--train-subset", str(cfg["train_subset"]),
            "--test-subset", str(cfg["test_subset"]), "--seed", str(cfg["seed"]),
            "--no-progress", "--out", str(out)]
    if cfg.get("checkpoint_every"):
        args += ["--checkpoint-every", str(cfg["checkpoint_every"])]
    return args


def start(args, log_dir, tag):
    out = open(log_dir / f"{tag}.out", "wb")
    err = open(log_dir / f"{tag}.err", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edgetrain", *args], cwd=REPO,
                            env=child_env(), stdout=out, stderr=err)
    out.close()
    err.close()
    return proc


def tail(path, n=1500):
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def checkpoint_temps(run):
    return {n for n in os.listdir(run) if n.startswith("." + CKPT + ".") and n.endswith(".tmp")}


def same_state(a, b):
    """Differences between two run checkpoints' model, optimizer, RNG state and
    per-epoch metrics (tolerance 0); [] when identical."""
    diffs = []
    if a["model"].keys() != b["model"].keys():
        return ["model keys differ"]
    for k in a["model"]:
        if not np.array_equal(a["model"][k], b["model"][k]):
            diffs.append(f"model {k}")
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    if sa.keys() != sb.keys():
        diffs.append("optimizer state keys differ")
    else:
        for i in sa:
            for name in sa[i]:
                if not np.array_equal(sa[i][name], sb[i][name]):
                    diffs.append(f"optimizer {i}.{name}")
    if a["rng"] != b["rng"]:
        diffs.append("rng state")
    if len(a["metrics"]) != len(b["metrics"]):
        diffs.append("number of epochs in the metrics")
    for ma, mb in zip(a["metrics"], b["metrics"]):
        for k in ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            if ma[k] != mb[k]:
                diffs.append(f"metrics epoch {ma['epoch']} {k}")
    return diffs


def position(ck):
    """(global steps done, epochs done, steps done within the next epoch)."""
    part = ck.get("in_epoch")
    return int(ck["step"]), int(ck["epoch"]), (int(part["batches"]) if part else 0)


def resume_line_matches(out_text, pos, steps_per_epoch):
    """Whether the run's "resuming" line (or, for a finished run, its "nothing to
    do" line) names the checkpoint position `pos`; None when the run was killed
    before printing it."""
    _, epochs, batches = pos
    done = re.search(r": (\d+) epoch\(s\) already done .*nothing to do$", out_text, re.M)
    if done:     # killed after the last checkpoint: a finished run, nothing to resume
        return batches == 0 and int(done.group(1)) == epochs
    m = re.search(r"^resuming .* (?:after epoch (\d+)|in epoch (\d+) after step (\d+)/(\d+))$",
                  out_text, re.M)
    if not m:
        return None
    if m.group(1) is not None:
        return batches == 0 and int(m.group(1)) == epochs
    return (batches > 0 and int(m.group(2)) == epochs + 1 and int(m.group(3)) == batches
            and int(m.group(4)) == steps_per_epoch)


def watch_and_kill(proc, run, mode, rng, max_delay):
    """Kill `proc` by `mode`; returns (killed?, what was aimed at)."""
    t0 = time.monotonic()
    if mode == "random":
        delay = rng.uniform(0.0, max_delay)
        aim = {"delay_s": round(delay, 4)}
        try:
            proc.wait(timeout=delay)
            return False, aim
        except subprocess.TimeoutExpired:
            pass
    else:
        k = rng.randint(1, 4)                 # the k-th checkpoint write of this cycle
        extra = rng.choice([0.0, rng.uniform(0.0, 0.003)]) if mode == "write" else 0.0
        aim = {"nth_write": k, "extra_s": round(extra, 5)}
        seen = checkpoint_temps(run) if run.exists() else set()
        ino = os.stat(run / CKPT).st_ino if (run / CKPT).exists() else None
        count = 0
        while True:
            if proc.poll() is not None:
                return False, aim
            if time.monotonic() - t0 > CHILD_TIMEOUT_S:
                break
            if run.exists():
                if mode == "write":
                    new = checkpoint_temps(run) - seen
                    if new:
                        seen |= new
                        count += 1
                else:
                    try:
                        cur = os.stat(run / CKPT).st_ino
                    except FileNotFoundError:
                        cur = None
                    if cur is not None and cur != ino:
                        ino = cur
                        count += 1
                if count >= k:
                    break
            time.sleep(POLL_S)
        if extra:
            time.sleep(extra)
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    aim["at_s"] = round(time.monotonic() - t0, 4)
    return proc.returncode == -signal.SIGKILL, aim


def run(kills=100, seed=0, work=None, data=None, cfg=None, log=print, modes=MODES):
    """The kill test; returns its record (record["pass"] says whether it held).
    modes: ((name, weight), ...) of the kill moments drawn."""
    data = stresslib.data_dir(data)
    cfg = {"model": "lenet", "precision": "int8", "epochs": 3, "batch_size": 64,
           "train_subset": 2000, "test_subset": 200, "seed": 0, "checkpoint_every": 3,
           **(cfg or {})}
    steps_per_epoch = (cfg["train_subset"] + cfg["batch_size"] - 1) // cfg["batch_size"]
    total_steps = steps_per_epoch * cfg["epochs"]
    rng = random.Random(seed)
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="kill-resume-")) if own_work else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    t_start = time.monotonic()
    load_start = stresslib.loadavg()
    failures = []

    def fail(msg):
        failures.append(msg)
        log(f"FAIL: {msg}")

    # the reference: uninterrupted, no mid-epoch checkpoints
    ref_cfg = {**cfg, "checkpoint_every": 0}
    t = time.monotonic()
    proc = start(train_args(data, work / "reference", ref_cfg), logs, "reference")
    rc = proc.wait(timeout=CHILD_TIMEOUT_S)
    ref_seconds = time.monotonic() - t
    if rc != 0:
        raise RuntimeError(f"the reference run failed (exit {rc}): {tail(logs / 'reference.err')}")
    ref = et.load(work / "reference" / CKPT)
    log(f"reference run: {total_steps} steps in {ref_seconds:.1f} s")
    max_delay = ref_seconds          # random kills: anywhere from start-up to the end

    cycles, rounds = [], []
    n_kills, rnd, cyc = 0, 0, 0
    run_dir = work / f"round{rnd:03d}"
    last_pos = None                  # checkpoint position after the previous kill

    def finish_round(proc_tag):
        """The round's run ended by itself: compare with the reference."""
        nonlocal rnd, run_dir, last_pos
        names = sorted(os.listdir(run_dir))
        end = et.load(run_dir / CKPT)
        diffs = same_state(ref, end)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        ok = (not diffs and end["in_epoch"] is None and len(lines) == cfg["epochs"]
              and not [n for n in names if n.endswith(".tmp")])
        rounds.append({"round": rnd, "equal_to_reference": not diffs, "ok": ok,
                       "files": names, "differences": diffs[:10]})
        if not ok:
            fail(f"round {rnd} ({proc_tag}): final state differs from the uninterrupted "
                 f"run: {diffs[:5]}, files {names}, {len(lines)} metrics lines")
        rnd += 1
        run_dir = work / f"round{rnd:03d}"
        last_pos = None

    while n_kills < kills and not failures:
        resume = (run_dir / CKPT).exists()
        before_temps = checkpoint_temps(run_dir) if run_dir.exists() else set()
        tag = f"cycle{cyc:04d}"
        mode = rng.choices([m for m, _ in modes], [w for _, w in modes])[0]
        proc = start(train_args(data, run_dir, cfg, resume=resume), logs, tag)
        killed, aim = watch_and_kill(proc, run_dir, mode, rng, max_delay)
        rec = {"cycle": cyc, "round": rnd, "resumed": resume, "mode": mode, **aim,
               "killed": killed, "exit": proc.returncode}
        out_text = tail(logs / f"{tag}.out", 100000)
        if resume and last_pos is not None:
            rec["resumed_from_checkpoint"] = resume_line_matches(out_text, last_pos,
                                                                 steps_per_epoch)
            if rec["resumed_from_checkpoint"] is False:
                fail(f"{tag}: the run did not resume from checkpoint.et's position "
                     f"{last_pos}: {out_text[:300]!r}")
        cyc += 1
        if not killed:
            cycles.append(rec)
            if proc.returncode != 0:
                fail(f"{tag}: the run exited {proc.returncode}: {tail(logs / f'{tag}.err')}")
                break
            finish_round(tag)
            continue
        n_kills += 1
        # -- what the kill left --------------------------------------------------------
        names = set(os.listdir(run_dir)) if run_dir.exists() else set()
        temps = {n for n in names if n.endswith(".tmp")}
        unexpected = sorted(names - temps - EXPECTED_FILES)
        if unexpected:
            fail(f"{tag}: unexpected files in the run directory: {unexpected}")
        # a run that got as far as its first output line has removed the temporary
        # files of earlier kills (remove_stale_temporaries runs before it)
        if before_temps and re.search(r"^\w+ \(\d+ trainable parameters", out_text, re.M):
            rec["stale_temps_removed"] = not (before_temps & temps)
            if before_temps & temps:
                fail(f"{tag}: temporary files of an earlier kill were not removed: "
                     f"{sorted(before_temps & temps)}")
        cut = sorted({n for n in temps if n.startswith("." + CKPT + ".")} - before_temps)
        rec["cut_checkpoint_write"] = bool(cut)
        for name in cut:             # the cut write: never a loadable-but-wrong file
            try:
                et.load(run_dir / name)
                rec["temp"] = "whole (written, not yet renamed)"
            except et.CheckpointError as e:
                rec["temp"] = "rejected: " + str(e).split(": ", 2)[-1][:80]
        if (run_dir / CKPT).exists():
            try:
                ck = et.load(run_dir / CKPT)
            except Exception as e:  # noqa: BLE001 - any failure to load is the bug sought
                fail(f"{tag}: checkpoint.et does not load after the kill: {e}")
                cycles.append(rec)
                break
            pos = position(ck)
            rec["checkpoint_step"] = pos[0]
            if last_pos is not None and pos < last_pos:
                fail(f"{tag}: the checkpoint moved back from {last_pos} to {pos}")
            if ck["in_epoch"] is not None and ck["in_epoch"]["batches"] >= steps_per_epoch:
                fail(f"{tag}: mid-epoch checkpoint at batch {ck['in_epoch']['batches']}")
            last_pos = pos
            if (run_dir / "metrics.jsonl").exists():
                try:
                    rows = [json.loads(s) for s in
                            (run_dir / "metrics.jsonl").read_text().splitlines()]
                except ValueError as e:
                    fail(f"{tag}: metrics.jsonl does not parse: {e}")
                else:
                    if len(rows) > pos[1]:
                        fail(f"{tag}: metrics.jsonl has {len(rows)} epochs, the checkpoint "
                             f"{pos[1]}")
        else:
            rec["checkpoint_step"] = None
            if last_pos is not None:
                fail(f"{tag}: checkpoint.et disappeared")
        cycles.append(rec)
        log(f"kill {n_kills}/{kills}: {mode:6s} {aim} -> checkpoint at step "
            f"{rec['checkpoint_step']}{' (cut a checkpoint write)' if cut else ''}")

    # the last run: finish it without a kill, then compare (a run killed before its
    # first checkpoint starts afresh, whatever temporary file the kill left)
    if not failures and run_dir.exists():
        resume = (run_dir / CKPT).exists()
        tag = f"cycle{cyc:04d}-final"
        proc = start(train_args(data, run_dir, cfg, resume=resume), logs, tag)
        rc = proc.wait(timeout=CHILD_TIMEOUT_S)
        rec = {"cycle": cyc, "round": rnd, "resumed": resume, "mode": "none",
               "killed": False, "exit": rc}
        if resume and last_pos is not None:
            rec["resumed_from_checkpoint"] = resume_line_matches(
                tail(logs / f"{tag}.out", 100000), last_pos, steps_per_epoch)
            if rec["resumed_from_checkpoint"] is not True:
                fail(f"{tag}: the final run did not resume from {last_pos}")
        cycles.append(rec)
        if rc != 0:
            fail(f"{tag}: the final run exited {rc}: {tail(logs / f'{tag}.err')}")
        else:
            finish_round(tag)

    seconds = time.monotonic() - t_start
    killed = [c for c in cycles if c["killed"]]
    by_mode = {m: sum(1 for c in killed if c["mode"] == m) for m, _ in MODES}
    assert all(m in by_mode for m, _ in modes), modes
    cut = [c for c in killed if c.get("cut_checkpoint_write")]
    resumed_checked = [c for c in cycles if c.get("resumed_from_checkpoint") is True]
    record = {
        "test": "kill_resume",
        "pass": not failures and n_kills == kills and bool(rounds)
                and all(r["ok"] for r in rounds),
        "kills_requested": kills,
        "kills": n_kills,
        "kills_by_mode": by_mode,
        "kills_during_checkpoint_write": len(cut),
        "cut_writes_temp_rejected_by_load": sum(1 for c in cut
                                                if c.get("temp", "").startswith("rejected")),
        "cut_writes_temp_whole_not_renamed": sum(1 for c in cut
                                                 if c.get("temp", "").startswith("whole")),
        "kills_before_first_checkpoint": sum(1 for c in killed
                                             if c.get("checkpoint_step") is None),
        "resumes_checked_against_checkpoint": len(resumed_checked),
        "stale_temporaries_checked_removed": sum(1 for c in cycles
                                                 if c.get("stale_temps_removed") is True),
        "runs_completed": len(rounds),
        "runs_equal_to_uninterrupted": sum(1 for r in rounds if r["equal_to_reference"]),
        "cycles": len(cycles),
        "failures": failures,
        "config": {**cfg, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                   "seed_of_kill_times": seed, "kill_mode_weights": dict(modes),
                   "data": str(data)},
        "reference_run_seconds": round(ref_seconds, 2),
        "seconds": round(seconds, 1),
        "loadavg_start": load_start,
        "loadavg_end": stresslib.loadavg(),
        "machine": stresslib.machine(),
        "rule": ("pass: every kill leaves a checkpoint.et that loads (SHA-256 checked) and "
                 "never moves back, nothing but the run's files and temporaries, metrics "
                 "that parse; every resume starts from checkpoint.et's position; every "
                 "completed run equals the uninterrupted one bit for bit"),
        "cycle_log": cycles,
        "runs": rounds,
    }
    if own_work and not failures:
        shutil.rmtree(work, ignore_errors=True)
    else:
        record["work_dir"] = str(work)
    return record


def markdown(r):
    c, m = r["config"], r["machine"]
    lines = [
        "# Kill / resume stress test (issue 6.4)",
        "",
        f"**{'PASS' if r['pass'] else 'FAIL'}**: {r['kills']} SIGKILLs of `edgetrain train` "
        f"({c['model']} {c['precision']}, {c['train_subset']} MNIST images, "
        f"{c['epochs']} epochs x {c['steps_per_epoch']} steps, batch {c['batch_size']}, "
        f"`--checkpoint-every {c['checkpoint_every']}`), each followed by `--resume`.",
        "",
        "| what | count |",
        "| --- | --- |",
        f"| kills (random delay / during a checkpoint write / just after one) | {r['kills']} "
        f"({r['kills_by_mode']['random']} / {r['kills_by_mode']['write']} / "
        f"{r['kills_by_mode']['after']}) |",
        f"| kills that cut a checkpoint write (temporary file left) | "
        f"{r['kills_during_checkpoint_write']} |",
        f"| ... whose temporary file `et.load` rejects (truncated) | "
        f"{r['cut_writes_temp_rejected_by_load']} |",
        f"| ... whose temporary file was whole but not yet renamed | "
        f"{r['cut_writes_temp_whole_not_renamed']} |",
        f"| kills before a run's first checkpoint | {r['kills_before_first_checkpoint']} |",
        f"| resumes seen starting at checkpoint.et's position | "
        f"{r['resumes_checked_against_checkpoint']} |",
        f"| restarts seen removing the temporary file of a cut write | "
        f"{r['stale_temporaries_checked_removed']} |",
        f"| runs completed / equal to the uninterrupted run (bit for bit) | "
        f"{r['runs_completed']} / {r['runs_equal_to_uninterrupted']} |",
        f"| failures | {len(r['failures'])} |",
        "",
        f"- rule: {r['rule']}",
        f"- time: {r['seconds']} s in all ({r['cycles']} starts); the uninterrupted run "
        f"takes {r['reference_run_seconds']} s; load average {r['loadavg_start']} at the "
        f"start, {r['loadavg_end']} at the end",
        stresslib.machine_md(m).rstrip(),
        f"- `stress/kill_resume.py --kills {r['kills_requested']} --seed "
        f"{c['seed_of_kill_times']}`, {m['date']}",
    ]
    for f in r["failures"]:
        lines.append(f"- FAILURE: {f}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--data-dir", default=None, help="MNIST 10k subset (default: as the tests)")
    p.add_argument("--work", default=None, help="keep the runs here (default: a temporary "
                   "directory, removed when the test passes)")
    p.add_argument("--out-dir", default=None, help="where the record goes (default "
                   "benchmarks/results/stress)")
    p.add_argument("--no-record", action="store_true")
    a = p.parse_args(argv)
    r = run(a.kills, a.seed, a.work, a.data_dir)
    if not a.no_record:
        paths = stresslib.write_record("kill_resume", r, markdown(r), a.out_dir)
        print("wrote " + ", ".join(str(x) for x in paths))
    print(f"{'PASS' if r['pass'] else 'FAIL'}: {r['kills']} kills, "
          f"{r['kills_during_checkpoint_write']} during a checkpoint write, "
          f"{r['runs_equal_to_uninterrupted']}/{r['runs_completed']} runs equal to the "
          f"uninterrupted one, {r['seconds']} s")
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
