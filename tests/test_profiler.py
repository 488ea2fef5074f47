"""et.profiler and `edgetrain profile`: the C records (jobs, waits, C CPU ranges),
their attribution to the Python ops, the Chrome trace, the cache counters, the
off state (nothing recorded) and the CLI.

FLOPs of every conv pass (forward, backward-data, backward-weight) are the
forward's useful count 2*N*Cout*Hout*Wout*(Cin/groups)*KH*KW, computed here
independently from the shapes; bytes are the job operands' sizes.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edgetrain as et
from edgetrain import _C
from edgetrain import autograd as _autograd
from edgetrain.nn import functional as F
from edgetrain.profiler import validate_chrome_trace

REPO = Path(__file__).resolve().parent.parent
needs_onednn = pytest.mark.skipif("onednn" not in et.backends(),
                                  reason="onednn backend not built here (the cache is its)")


@pytest.fixture(autouse=True)
def _restore():
    backend, prec = et.get_backend(), et.get_precision()
    yield
    et.set_backend(backend)
    et.set_precision(prec)
    assert _autograd._profiler is None and not _C.profiler_enabled()


def runner(backend, dtype, op="conv2d"):
    """The backend a job of `dtype` really runs on (its ref fallback otherwise)."""
    return backend if _C.backend_supports(backend, op, dtype) else "ref"


def jobs_of(p):
    return [e for e in p.events if e["kind"] == "job"]


# --- clock and thread ids shared with Python -------------------------------------
def test_clock_and_thread_are_pythons():
    a = time.monotonic_ns()
    c = _C.profiler_clock_ns()
    b = time.monotonic_ns()
    assert a <= c <= b
    assert _C.profiler_thread_id() == threading.get_ident()


# --- conv2d: exactly the expected jobs, labels, FLOPs, bytes ----------------------
CONV = dict(N=2, C=4, H=9, W=9, OC=6, K=3, stride=2, pad=1, groups=2)


@pytest.mark.parametrize("prec", ["fp32", "int8"])
def test_conv2d_jobs_labels_flops(prec, monkeypatch):
    # fp32 dw as ONE conv job: the gemm formulation (ET_CONV_DW, csrc/ops/conv2d_dw.c) splits
    # it into groups x chunks matmul jobs (tests/test_conv_dw_gemm.py checks their FLOPs)
    monkeypatch.setenv("ET_CONV_DW", "conv")
    c = CONV
    rng = np.random.default_rng(0)
    x = et.tensor(rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32),
                  requires_grad=True)
    w = et.tensor(rng.standard_normal((c["OC"], c["C"] // c["groups"], c["K"], c["K"]))
                  .astype(np.float32), requires_grad=True)
    b = et.tensor(rng.standard_normal(c["OC"]).astype(np.float32), requires_grad=True)
    backend = et.get_backend()
    with et.precision(prec):
        with et.profiler.profile() as p:
            y = F.conv2d(x, w, b, stride=c["stride"], padding=c["pad"], groups=c["groups"])
            y.sum().backward()
    oh = (c["H"] + 2 * c["pad"] - c["K"]) // c["stride"] + 1
    assert y.shape == (c["N"], c["OC"], oh, oh)
    flops = 2 * c["N"] * c["OC"] * oh * oh * (c["C"] // c["groups"]) * c["K"] * c["K"]
    jobs = jobs_of(p)
    assert [j["name"] for j in jobs] == ["conv2d.fwd", "conv2d.bwd_data", "conv2d.bwd_weight"]
    for j in jobs:
        assert j["precision"] == prec
        assert j["flops"] == flops, j
        assert j["status"] == "ok"
        assert j["t_submit_ns"] <= j["t_start_ns"] <= j["t_end_ns"]
    # the forward's operands: x, w (+ f32 bias), y; int8: 1-byte x and w, s32 y, no bias
    nx, nw, ny = c["N"] * c["C"] * c["H"] * c["W"], w.numel(), y.numel()
    want = 4 * (nx + nw + c["OC"] + ny) if prec == "fp32" else nx + nw + 4 * ny
    assert jobs[0]["bytes"] == want
    # the fwd job runs on the backend asked for unless it lacks the combination
    # (x is signed here: an int8 forward quantizes it to s8)
    assert jobs[0]["backend"] == runner(backend, "float32" if prec == "fp32" else "int8")
    # attribution: the fwd job to conv2d.fwd, both backward jobs to conv2d.bwd
    assert [j["owner"] for j in jobs] == ["conv2d.fwd", "conv2d.bwd", "conv2d.bwd"]
    waits = [e for e in p.events if e["kind"] == "wait"]
    assert len(waits) == 3 and {w_["ticket"] for w_ in waits} == {j["ticket"] for j in jobs}
    assert all(w_["owner"] in ("conv2d.fwd", "conv2d.bwd") for w_ in waits)
    cpu = [e for e in p.events if e["kind"] == "cpu"]
    if prec == "fp32":
        assert cpu == []          # no quantize / convert in fp32
    else:
        names = {e["name"] for e in cpu}
        assert {"quantize.input", "quantize.weight", "quantize.grad_output",
                "dequantize.output", "dequantize.grad_input",
                "dequantize.grad_weight"} <= names, names
        assert all(e["owner"] in ("conv2d.fwd", "conv2d.bwd") for e in cpu)
    # the rows: the Python op's accelerator time is its jobs' time
    rows = {(r["name"], r["where"]): r for r in p.rows()}
    fwd_cpu, fwd_acc = rows[("conv2d.fwd", "cpu")], rows[("conv2d.fwd", "accelerator")]
    assert fwd_cpu["accel_ms"] == pytest.approx(fwd_acc["accel_ms"])
    assert fwd_cpu["flops"] == flops and fwd_cpu["precision"] == prec
    assert rows[("conv2d.bwd", "cpu")]["flops"] == 2 * flops
    assert set(rows[("conv2d.bwd", "cpu")]["accel_ms_by_pass"]) == {"bwd_data", "bwd_weight"}
    assert fwd_cpu["cpu_total_ms"] >= fwd_cpu["queue_wait_ms"] > 0
    assert fwd_cpu["cpu_self_ms"] >= 0


def test_int8_weight_gradient_chunks_sum_to_the_flops():
    # N*OH*OW above the s32 bound of one int8 dw job: split in batch chunks
    # whose FLOPs add up to the pass's
    n, c, hw, oc = 6, 2, 160, 2       # s8 x: <= 133,144 products per job, 5 images
    x = et.randn(n, c, hw, hw, requires_grad=True)
    w = et.randn(oc, c, 1, 1, requires_grad=True)
    with et.precision("int8"), et.profiler.profile() as p:
        F.conv2d(x, w).sum().backward()
    dw = [j for j in jobs_of(p) if j["name"] == "conv2d.bwd_weight"]
    assert len(dw) > 1
    assert sum(j["flops"] for j in dw) == 2 * n * oc * hw * hw * c


def test_linear_jobs_flops():
    m, k, n = 5, 7, 3
    x = et.randn(m, k, requires_grad=True)
    lin = et.nn.Linear(k, n)
    with et.profiler.profile() as p:
        lin(x).sum().backward()
    jobs = jobs_of(p)
    assert [j["name"] for j in jobs] == ["linear.fwd", "linear.bwd_data", "linear.bwd_weight"]
    assert all(j["flops"] == 2 * m * n * k for j in jobs)


def test_other_queues_are_recorded_with_their_id():
    q = _C.Queue(4)
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 5), np.float32)
    out = np.zeros((3, 5), np.float32)
    with et.profiler.profile() as p:
        q.wait(q.submit_noop())
        q.wait(q.submit_matmul(a, b, out))
    q.close()
    jobs = jobs_of(p)
    assert [j["name"] for j in jobs] == ["job", "matmul"]
    assert all(j["queue"] == q.id for j in jobs)
    assert jobs[1]["flops"] == 2 * 3 * 5 * 4 and jobs[0]["flops"] == -1
    assert q.id != _C.default_queue_id()
    trace = p.chrome_trace()
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert f"accelerator (queue {q.id} worker)" in names


# --- off: nothing ------------------------------------------------------------------
def test_off_records_nothing():
    _C.profiler_drain()
    x = et.randn(2, 3, 8, 8, requires_grad=True)
    w = et.randn(4, 3, 3, 3, requires_grad=True)
    with et.profiler.profile(enabled=False) as p:
        F.conv2d(x, w, padding=1).sum().backward()
        assert _autograd._profiler is None and not et.profiler.is_profiling()
    with et.precision("int8"):
        F.conv2d(x, w, padding=1).sum().backward()
    assert _C.profiler_drain() == ([], 0)
    # a profile ends recording: ops after it leave no record
    with et.profiler.profile() as p:
        F.conv2d(x, w, padding=1)
    F.conv2d(x, w, padding=1).sum().backward()
    assert _C.profiler_drain() == ([], 0)
    assert len(jobs_of(p)) == 1


def test_profiles_do_not_nest_and_results_need_the_end():
    p = et.profiler.profile()
    with pytest.raises(RuntimeError, match="after the `with`"):
        p.table()
    with et.profiler.profile():
        with pytest.raises(RuntimeError, match="already recording"):
            with et.profiler.profile():
                pass
    with pytest.raises(ValueError, match="sort_by"):
        with et.profiler.profile() as q:
            pass
        q.table(sort_by="bogus")


def test_full_buffer_drops_and_counts():
    x = et.randn(2, 3, 8, 8, requires_grad=True)
    w = et.randn(4, 3, 3, 3, requires_grad=True)
    with et.profiler.profile(max_records=3) as p:
        F.conv2d(x, w, padding=1).sum().backward()   # 3 jobs + 3 waits = 6 records
    s = p.summary()
    assert s["dropped_records"] == 3
    assert sum(1 for e in p.events if e["kind"] in ("job", "wait")) == 3
    assert "dropped" in p.table()


# --- a model step: rows, trace, PNG --------------------------------------------------
def lenet_step_profile():
    et.manual_seed(0)
    model = et.models.lenet()
    opt = et.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = et.randn(4, 1, 28, 28), et.randint(0, 10, (4,))
    crit = et.nn.CrossEntropyLoss()
    with et.profiler.profile() as p:
        with et.profiler.record_function("step"):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    return p


def test_model_step_trace_is_valid(tmp_path):
    p = lenet_step_profile()
    path = tmp_path / "trace.json"
    p.export_chrome_trace(path)
    trace = json.loads(path.read_text())
    n = validate_chrome_trace(trace)
    evs = trace["traceEvents"]
    assert n == sum(1 for e in evs if e["ph"] == "X") > 0
    names = {e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"CPU (Python thread)", "accelerator (queue worker)"} <= names
    xs = [e for e in evs if e["ph"] == "X"]
    acc = [e for e in xs if e["tid"] >= 1_000_000_000]     # the worker's track
    cpu = [e for e in xs if e["tid"] < 1_000_000_000]
    assert acc and cpu
    assert {e["tid"] for e in cpu} == {threading.get_native_id()}   # ids mapped to the OS's
    assert all(e["name"].endswith("]") for e in acc)      # "conv2d.fwd [fp32]"
    # every job starts after its submit, and has a flow from the submitting op
    for e in acc:
        assert e["args"]["queued_us"] >= 0 and e["args"]["flops"] > 0
        assert e["args"]["submitted_by"] in ("conv2d.fwd", "conv2d.bwd", "linear.fwd",
                                             "linear.bwd")
    assert sum(1 for e in evs if e["ph"] == "s") == len(acc)
    for key in ("SGD.step", "step", "autograd.backward", "relu.fwd", "max_pool2d.bwd",
                "batch_norm.fwd", "queue.wait"):
        assert any(e["name"] == key for e in xs), key
    # the summary adds up: the accelerator is busy for the jobs' time, within the wall
    s = p.summary()
    assert 0 < s["accelerator_busy_ms"] <= s["wall_ms"]
    assert s["jobs"] == len(acc)
    assert sum(r["accel_ms"] for r in s["rows"] if r["where"] == "accelerator") == \
        pytest.approx(s["accelerator_busy_ms"])
    table = p.table(row_limit=5)
    assert table.splitlines()[0].split()[:2] == ["name", "where"]
    json.dumps(s)   # serialisable


def test_ops_of_another_thread_get_their_track():
    x, w = et.randn(2, 3, 8, 8), et.randn(4, 3, 3, 3)
    seen = {}

    def work():
        seen["ident"] = threading.get_ident()
        seen["native"] = threading.get_native_id()
        with et.profiler.record_function("worker"):
            F.conv2d(x, w, padding=1)

    with et.profiler.profile() as p:
        th = threading.Thread(target=work)
        th.start()
        th.join()
        F.linear(et.randn(2, 3), et.randn(4, 3))
    jobs = {j["name"]: j for j in jobs_of(p)}
    assert jobs["conv2d.fwd"]["thread"] == seen["ident"] and \
        jobs["conv2d.fwd"]["owner"] == "conv2d.fwd"
    assert jobs["linear.fwd"]["thread"] == threading.get_ident()
    trace = p.chrome_trace()
    validate_chrome_trace(trace)
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["name"] == "thread_name"}
    assert names[threading.get_native_id()] == "CPU (Python thread)"
    # the worker thread has ended: its OS id is unknown at the end, its track stays apart
    others = [n for t, n in names.items() if n.startswith("CPU (thread")]
    assert others == ["CPU (thread #1, ended)"]


def test_validator_rejects_bad_traces():
    ok = {"traceEvents": [
        {"ph": "X", "name": "a", "ts": 0.0, "dur": 5.0, "pid": 1, "tid": 1_000_000_001},
        {"ph": "X", "name": "b", "ts": 5.0, "dur": 1.0, "pid": 1, "tid": 1_000_000_001}]}
    assert validate_chrome_trace(ok) == 2
    overlap = json.loads(json.dumps(ok))
    overlap["traceEvents"][1]["ts"] = 4.0
    with pytest.raises(ValueError, match="overlap"):
        validate_chrome_trace(overlap)
    neg = json.loads(json.dumps(ok))
    neg["traceEvents"][0]["dur"] = -1
    with pytest.raises(ValueError, match="dur"):
        validate_chrome_trace(neg)
    missing = json.loads(json.dumps(ok))
    del missing["traceEvents"][0]["tid"]
    with pytest.raises(ValueError, match="lacks"):
        validate_chrome_trace(missing)


def test_png(tmp_path):
    pytest.importorskip("matplotlib", reason="save_png needs matplotlib")
    p = lenet_step_profile()
    path = tmp_path / "p.png"
    p.save_png(path, title="lenet")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the primitive cache --------------------------------------------------------------
@needs_onednn
def test_cache_counters_move():
    old = _C.cache_stats()["capacity"]
    _C.clear_cache()
    try:
        a, b = et.randn(6, 5), et.randn(4, 5)
        with et.backend("onednn"), et.profiler.profile() as p:
            F.linear(a, b)               # builds the primitive: a miss
            F.linear(a, b)               # the same shape: a hit
        j = jobs_of(p)
        assert [(x["cache_misses"], x["cache_hits"]) for x in j] == [(1, 0), (0, 1)]
        assert p.summary()["cache"] == {"hits": 1, "misses": 1, "evictions": 0}
        _C.set_cache_capacity(1)
        with et.backend("onednn"), et.profiler.profile() as p:
            F.linear(et.randn(3, 5), b)   # another shape evicts the first
        assert p.summary()["cache"] == {"hits": 0, "misses": 1, "evictions": 1}
        assert jobs_of(p)[0]["cache_evictions"] == 1
        assert "1/0/0" not in p.table() and "0/1/1" in p.table()
    finally:
        _C.set_cache_capacity(old)
        _C.clear_cache()


# --- the CLI ---------------------------------------------------------------------------
def test_cli_profile_lenet(tmp_path):
    out = tmp_path / "prof"
    r = subprocess.run([sys.executable, "-m", "edgetrain", "profile", "--model", "lenet",
                        "--precision", "int8", "--batch-size", "4", "--steps", "2",
                        "--warmup", "1", "--out", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "conv2d.bwd_weight" in r.stdout and "GFLOP/s" in r.stdout
    validate_chrome_trace(json.loads((out / "trace.json").read_text()))
    rep = json.loads((out / "profile.json").read_text())
    assert rep["model"] == "lenet" and rep["input_shape"] == [1, 28, 28]
    assert len(rep["step_seconds"]) == 2
    rows = {(x["name"], x["where"]) for x in rep["profile"]["rows"]}
    assert {("conv2d.fwd", "accelerator"), ("conv2d.bwd", "cpu"), ("train_step", "cpu"),
            ("quantize.grad_output", "cpu")} <= rows
    assert [x for x in rep["profile"]["rows"] if x["name"] == "train_step"][0]["calls"] == 2
    assert (out / "profile.png").stat().st_size > 0


@pytest.mark.parametrize("model", ["resnet18", "resnet50", "mobilenet_v2"])
def test_cli_profile_every_bench_model(model, tmp_path):
    # issue 5: `edgetrain profile` works for every model of the benchmark grid and its
    # trace is a valid Chrome trace (small inputs here; the layers and passes are the same)
    out = tmp_path / "prof"
    r = subprocess.run([sys.executable, "-m", "edgetrain", "profile", "--model", model,
                        "--precision", "int8-mixed", "--batch-size", "2", "--input-size", "32", "32",
                        "--steps", "1", "--warmup", "0", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    trace = json.loads((out / "trace.json").read_text())
    validate_chrome_trace(trace)
    names = {e.get("name") for e in trace["traceEvents"]}
    # accelerator jobs carry their precision: int8-mixed = int8 fwd / dx, bf16 dw
    assert {"conv2d.fwd [int8]", "conv2d.bwd_data [int8]", "conv2d.bwd_weight [bf16]"} <= names
    assert json.loads((out / "profile.json").read_text())["model"] == model


def test_cli_profile_rejects_unknown_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgetrain", "profile", "--model", "vgg99",
                        "--batch-size", "2", "--out", str(tmp_path / "x")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "vgg99" in r.stderr and "lenet" in r.stderr
