"""Fuzz smoke tests (issue 6, section 2): a few seconds of each fuzz target
through the real child-process harness (fuzz/harness.py), the regressions the
fuzzers found, and proof that the harness does see a crash.

The long runs are `make fuzz` (fuzz/run_all.py --minutes 10, record in
benchmarks/results/fuzz/). Here every target runs with a fixed seed for ~3 s
(hundreds to thousands of random and mutated inputs) and must end with zero
findings: only clean exceptions (IDX: ValueError naming read_idx; checkpoint:
CheckpointError naming load:; ops: fuzz.ops_calls.clean_exceptions()), no
crash, no hang, no runaway memory.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import re
import struct
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import edgetrain as et
from edgetrain.data import read_idx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fuzz import harness, run_all  # noqa: E402


# -- the fuzzers, briefly -----------------------------------------------------
def test_run_all_idx_and_checkpoint_smoke(tmp_path):
    rc = run_all.main(["--minutes", "0.04", "--targets", "idx,checkpoint", "--seed", "12345",
                       "--out", str(tmp_path)])
    rec = json.loads((tmp_path / "record.json").read_text())
    md = (tmp_path / "record.md").read_text()
    by = {r["target"]: r for r in rec["targets"]}
    for name in ("idx", "checkpoint"):
        r = by[name]
        assert r["findings"] == 0 and r["crashes"] == 0 and r["hangs"] == 0, r["finding_signatures"]
        assert r["executions"] >= 200, r               # many inputs, not a stuck loop
        assert r["ok"] > 0 and r["clean"] > 0           # valid AND malformed inputs reached
        assert r["duration_s"] >= 2.4
    assert rc == 0 and rec["findings"] == 0
    assert "cpu" in rec["machine"] and rec["seed"] == 12345
    assert "| idx |" in md and "Total findings: 0" in md
    assert not list(tmp_path.glob(".record*"))         # atomic writes left no temporaries


def test_ops_calls_smoke(tmp_path):
    from fuzz import fuzz_ops
    r = harness.run_target(fuzz_ops.TARGET, 3.0, 777, tmp_path)
    assert r["findings"] == 0 and r["crashes"] == 0, r["finding_signatures"]
    assert r["executions"] >= 200 and r["ok"] > 0 and r["clean"] > 0


# -- the harness sees crashes, unclean exceptions and hangs --------------------
_FAKE = '''
import os, sys, time
sys.path.insert(0, {repo!r})
from fuzz import harness

class Fake(harness.Target):
    name = "fake"
    script = os.path.abspath(__file__)
    suffix = ".bin"
    clean = (ValueError,)
    message_prefix = "fake:"
    hang_s = 2.0

    def generate(self, rng):
        return bytes([rng.randrange(4)]) + b"payload", "one"

    def execute(self, path):
        b = open(path, "rb").read()
        if b[0] == 0 and {crash!r} == "abort":
            os.abort()                      # a C-level crash: SIGABRT
        if b[0] == 0 and {crash!r} == "hang":
            time.sleep(60)
        if b[0] == 1:
            raise KeyError("not a clean exception")
        if b[0] == 2:
            raise ValueError("no op name in this message")
        raise ValueError("fake: clean")

TARGET = Fake()
if __name__ == "__main__":
    sys.exit(harness.main(TARGET))
'''


def _fake_target(tmp_path, crash):
    script = tmp_path / f"fake_{crash}.py"
    script.write_text(textwrap.dedent(_FAKE.format(repo=str(REPO), crash=crash)))
    ns = {"__file__": str(script), "__name__": "fake"}
    exec(compile(script.read_text(), str(script), "exec"), ns)
    return ns["TARGET"]


def test_harness_detects_crashes_and_keeps_the_input(tmp_path):
    t = _fake_target(tmp_path, "abort")
    r = harness.run_target(t, 3.0, 1, tmp_path / "out")
    assert r["crashes"] >= 1 and r["children"] >= 2    # restarted after each crash
    c = r["crash_inputs"][0]
    assert c["kind"] == "signal SIGABRT"
    assert Path(c["input"]).read_bytes()[0] == 0       # the input that crashed it
    sigs = r["finding_signatures"]
    assert any(s.startswith("KeyError@") for s in sigs)          # wrong exception type
    assert any(s.startswith("ValueError@") for s in sigs)        # message without "fake:"
    kept = [Path(p) for p in r["kept"]]
    assert kept and all(p.exists() and p.with_suffix(".txt").exists() for p in kept)


def test_harness_detects_hangs(tmp_path):
    t = _fake_target(tmp_path, "hang")
    r = harness.run_target(t, 3.0, 2, tmp_path / "out")
    assert r["hangs"] >= 1 and r["crash_inputs"][0]["kind"] == "hang"


# -- IDX: regressions found by the fuzzer ----------------------------------------
def _idx(code, dims, payload=b""):
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_huge_declared_sizes_raise_without_allocating(tmp_path, gz):
    p = tmp_path / ("huge.idx.gz" if gz else "huge.idx")
    for dims in [(2 ** 20, 2 ** 20), (2 ** 32 - 1,) * 4, (0, 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1)]:
        data = _idx(0x0E, dims, b"\x00" * 64)
        p.write_bytes(gzip.compress(data) if gz else data)

        def read():
            with pytest.raises(ValueError, match="read_idx") as ei:
                read_idx(p)
            assert p.name in str(ei.value)
        assert _peak_bytes(read) < 4 << 20, dims       # 1 MiB reads, nothing near 2^40 items


def test_idx_more_dims_than_numpy_allows(tmp_path):
    p = tmp_path / "dims.idx"
    p.write_bytes(_idx(0x08, (1,) * 65, b"\x07"))
    with pytest.raises(ValueError, match=r"read_idx: .*dims.idx.*65 dimensions"):
        read_idx(p)
    p.write_bytes(_idx(0x08, (1,) * 64, b"\x07"))
    assert read_idx(p).shape == (1,) * 64


def test_idx_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    """A 1-item file followed by 256 MiB of zeros (gzip members concatenate):
    refused after reading 1 byte past the payload. Declaring 2^32-1 items over
    96 MiB of zeros: counted without being kept, then refused as truncated."""
    zeros = gzip.compress(bytes(1 << 24), mtime=0)               # 16 MiB -> ~16 KiB
    p = tmp_path / "bomb.idx.gz"
    p.write_bytes(gzip.compress(_idx(0x08, (1,), b"\x07"), mtime=0) + zeros * 16)

    def read(match):
        def f():
            with pytest.raises(ValueError, match=match):
                read_idx(p)
        return f
    t0 = time.monotonic()
    assert _peak_bytes(read("trailing data after the payload")) < 8 << 20
    assert time.monotonic() - t0 < 5                               # not inflated
    p.write_bytes(gzip.compress(_idx(0x08, (2 ** 32 - 1,)), mtime=0) + zeros * 6)
    peak = _peak_bytes(read("truncated payload.*gzip stream has 100663296"))
    assert peak < 8 << 20, peak                                    # counted, not kept


def test_idx_large_valid_gzip_holds_one_copy(tmp_path):
    """A valid payload above the count-first threshold (64 MiB) reads right."""
    n = (64 << 20) + 5
    p = tmp_path / "big.idx.gz"
    payload = np.arange(n, dtype=np.uint8).tobytes()
    p.write_bytes(gzip.compress(_idx(0x08, (n,), payload), compresslevel=1, mtime=0))
    a = read_idx(p)
    assert a.shape == (n,) and a[-1] == (n - 1) % 256 and a.flags.writeable


# -- checkpoint: regressions found by the fuzzer -----------------------------------
def _forge(tree, metas=(), data=b"", raw_manifest=None):
    from edgetrain import checkpoint as ck
    m = raw_manifest if raw_manifest is not None else json.dumps(
        {"tree": tree, "arrays": list(metas)}).encode()
    body = ck._HEADER.pack(ck.MAGIC, ck.VERSION, 0, len(m), len(data)) + m + data
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize("meta", [
    {"dtype": "<f4", "shape": [math.inf], "offset": 0, "nbytes": 4},     # OverflowError before
    {"dtype": "<f4", "shape": [1], "offset": math.inf, "nbytes": 4},
    {"dtype": "<f4", "shape": [1] * 65, "offset": 0, "nbytes": 4},      # numpy's ValueError before
    {"dtype": "<f4", "shape": [1.0], "offset": 0, "nbytes": 4},
    {"dtype": "<f4", "shape": [True], "offset": 0, "nbytes": 4},
    {"dtype": "<f4", "shape": [0, 2 ** 62, 2 ** 62], "offset": 0, "nbytes": 0},
    {"dtype": "(2,)<f4", "shape": [1], "offset": 0, "nbytes": 8},
    {"dtype": [["a", "<f4"]], "shape": [1], "offset": 0, "nbytes": 4},
    {"dtype": 5, "shape": [1], "offset": 0, "nbytes": 4},
    {"dtype": "<M8[s]", "shape": [1], "offset": 0, "nbytes": 8},
    {"dtype": "<f3", "shape": [1], "offset": 0, "nbytes": 3},
    {"dtype": "<f4", "shape": [1], "offset": 0},
    ["<f4", [1], 0, 4],
])
def test_checkpoint_hostile_array_entries_raise_checkpoint_error(tmp_path, meta):
    p = tmp_path / "forged.et"
    p.write_bytes(_forge({"array": 0}, [meta], b"\0" * 64))
    with pytest.raises(et.CheckpointError, match=r"load: .*forged.et.*malformed manifest"):
        et.load(p)


def test_checkpoint_nonfinite_json_constants_are_refused(tmp_path):
    p = tmp_path / "nan.et"
    p.write_bytes(_forge(None, raw_manifest=b'{"tree": NaN, "arrays": []}'))
    with pytest.raises(et.CheckpointError, match="non-finite number NaN"):
        et.load(p)


def test_checkpoint_numpy_float64_scalar_round_trips_as_itself():
    """np.float64 is a float subclass: it was stored as a plain float."""
    buf = io.BytesIO()
    et.save({"a": np.float64(1.5), "b": 2.5, "c": np.float16(3)}, buf)
    buf.seek(0)
    r = et.load(buf)
    assert type(r["a"]) is np.float64 and r["a"] == 1.5
    assert type(r["b"]) is float and type(r["c"]) is np.float16


# -- ops: calls that crashed or misbehaved, replayed in a child --------------------
# (a child: on a build without the fix the first one is a segfault, which must
# fail this test, not end the test run; under a 4 GiB address-space limit, so
# a wrapped size cannot make the machine allocate for real)
_CALL_REGRESSIONS = [
    # im2col with padding 2^62: the output width 2^61 + 1 times the height
    # wrapped to a small column buffer -> SIGSEGV (fuzz/fuzz_ops.py, run 2)
    ({"fn": "_C.im2col", "args": [{"a": ["float32", [1, 2, 6, 3], "c", "randn", 1]},
                                  {"v": [3, 3]}, {"v": [1, 2]}, {"v": [2, 2 ** 62]},
                                  {"v": [2, 0]}, {"v": [1, 1]}]}, "sizes and parameters"),
    # col2im of x_shape (1, 1, 2^32, 2^32): OH*OW = 2^64 wrapped to 0 and matched
    # empty cols; only numpy's own shape check stopped it from going on
    ({"fn": "_C.col2im", "args": [{"a": ["float32", [1, 1, 0], "c", "randn", 1]},
                                  {"v": [1, 1, 2 ** 32, 2 ** 32]}, {"v": [1, 1]}]},
     r"x_shape must be in \[1, 2\^31\)"),
    # a shape whose element count wraps around int64 (2^64 + 2^31) asked for
    # 8 GiB and zero-filled it before numpy refused the shape (fixed in
    # csrc/core/tensor.c: refused from the shape, ShapeError or MemoryError
    # naming it, never the wrapped 8589934592 bytes)
    ({"fn": "_C.empty", "args": [{"v": [2 ** 33 + 1, 2 ** 31]}, {"v": "float32"}, {"v": True}]},
     r"(too large|more than 2\^6[34] bytes)"),
]


@pytest.mark.parametrize("spec,needle", _CALL_REGRESSIONS, ids=["im2col", "col2im", "empty"])
def test_ops_call_regressions_raise_shape_error_in_a_child(tmp_path, spec, needle):
    import subprocess
    p = tmp_path / "call.json"
    p.write_text(json.dumps(dict(spec, ctx={}, mutated=[])))
    r = subprocess.run([sys.executable, str(REPO / "fuzz" / "fuzz_ops.py"), "--replay", str(p)],
                       cwd=str(REPO), capture_output=True, text=True, timeout=120,
                       preexec_fn=harness._limits(4096))
    assert r.returncode == 0, f"rc {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
    assert r.stdout.startswith(("clean: edgetrain.ShapeError", "clean: MemoryError")), r.stdout
    assert re.search(needle, r.stdout) and "8589934592" not in r.stdout, r.stdout


# -- nn.functional: what the malformed-call fuzzing found -------------------------
def test_functional_regressions_found_by_the_call_fuzzer():
    import edgetrain.nn.functional as F
    # relu of a 0-d tensor: ascontiguousarray made it (1,); backward then failed
    x = et.tensor(-2.0, requires_grad=True)
    y = F.relu(x)
    assert y.shape == ()
    (y * 3).backward()
    assert x.grad.shape == () and float(x.grad.numpy()) == 0.0
    # log_softmax of an empty tensor: reshape(-1, 0) raised RuntimeError
    e = F.log_softmax(et.zeros(0, 3), dim=1)
    assert e.shape == (0, 3)
    assert F.log_softmax(et.zeros(2, 0), dim=1).shape == (2, 0)
    # linear of (2, 3, 0) by (2, 0): reshape(-1, 0) raised RuntimeError (the
    # confirmation run); now _C's ShapeError names the empty dimension
    with pytest.raises(et.ShapeError, match="empty dimension"):
        F.linear(et.zeros(2, 3, 0), et.zeros(2, 0))
    # non-Tensor inputs: AttributeError before, now TypeError naming the op
    with pytest.raises(TypeError, match="pad: input must be an edgetrain Tensor"):
        F.pad([1.0, 2.0], (1, 1))
    with pytest.raises(TypeError, match="pad: pad must be a sequence of ints"):
        F.pad(et.zeros(2, 2), 1)
    with pytest.raises(TypeError, match="dropout: input must be an edgetrain Tensor"):
        F.dropout("x", 0.5)
    # a contiguous but misaligned float32 array (odd byte offset): _C refused it
    # and told the caller to use ascontiguousarray, which returns it unchanged
    buf = np.zeros(4 * 2 * 3 * 5 * 5 + 1, np.uint8)
    xa = np.frombuffer(buf.data, np.float32, 150, offset=1).reshape(2, 3, 5, 5)
    assert not xa.flags.aligned and xa.flags.c_contiguous
    xa[...] = np.arange(150, dtype=np.float32).reshape(2, 3, 5, 5) / 10
    w = et.ones(4, 3, 3, 3)
    y = F.conv2d(et.from_numpy(xa), w, padding=1)
    np.testing.assert_array_equal(y.numpy(), F.conv2d(et.from_numpy(xa.copy()), w, padding=1).numpy())
    assert F.relu(et.from_numpy(xa)).shape == xa.shape
    assert F.linear(et.from_numpy(xa.reshape(6, 25)), et.ones(2, 25)).shape == (6, 2)
