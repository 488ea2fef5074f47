"""conv2d's weight gradient in its two formulations (csrc/ops/conv2d.c):
  conv : one forward conv of rearranged operands (x group-swapped, dy as kernel)
  gemm : im2col + the backend's matmul primitive, chunked over output rows
selected by ET_CONV_DW=conv|gemm|auto, chunk buffers bounded by
ET_CONV_DW_BUDGET (bytes; tiny values force one output row per chunk). Both are
read by the C code at every call, so the tests switch them with monkeypatch.

Each case runs on every backend in et.backends() and compares
  gemm (unchunked and chunked) with torch.nn.grad.conv2d_weight in float64, and
  gemm with the conv formulation.
Tolerance (fp32): max |err| / max |ref| <= 1e-5. The reductions here run over
N*OH*OW <= ~2000 positions; fp32 rounding of such sums stays near 1e-6 of the
largest entry (measured worst 6e-7 on these cases), so 1e-5 still catches any wrong index
(a misplaced or missing tap moves entries by O(1) of max |ref|).
The queue's job counters prove the formulation that ran (conv: 1 job; gemm:
groups x chunks matmul jobs), so a switch that were ignored fails the tests.
"""
import numpy as np
import pytest

import edgetrain as et
from edgetrain import _C

torch = pytest.importorskip("torch")

TOL = 1e-5
BACKENDS = et.backends()
HAVE_QUEUE_STATS = hasattr(_C, "default_queue_stats")
TINY = "1"   # bytes: every chunk is one output row (N*OH chunks)


def rel_err(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


# (N, C, H, W, OC, (KH, KW), stride, padding, dilation, groups)
CASES = [
    (1, 3, 9, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1),      # N=1, plain 3x3
    (3, 4, 11, 10, 6, (3, 3), (2, 3), (1, 0), (2, 1), 2),    # stride 2/3, dilation 2, groups 2
    (2, 6, 7, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), 6),      # depthwise
    (2, 6, 7, 9, 12, (3, 3), (2, 2), (1, 1), (1, 1), 6),     # depthwise, multiplier 2
    (2, 8, 5, 5, 16, (1, 1), (1, 1), (0, 0), (1, 1), 1),     # 1x1
    (3, 8, 9, 9, 8, (1, 1), (2, 2), (0, 0), (1, 1), 1),      # 1x1 stride 2 (downsample)
    (4, 3, 16, 15, 8, (7, 7), (2, 2), (3, 3), (1, 1), 1),    # 7x7 s2 p3 (stem)
    (2, 4, 12, 12, 4, (7, 7), (3, 3), (0, 2), (1, 2), 1),    # 7x7 uneven padding, dilation 2
    (3, 4, 3, 3, 5, (3, 3), (1, 1), (0, 0), (1, 1), 1),      # 1x1 output
    (2, 4, 1, 1, 6, (1, 1), (3, 3), (0, 0), (1, 1), 2),      # 1x1 input and output, groups 2
    (2, 2, 2, 3, 3, (1, 1), (3, 3), (3, 2), (1, 1), 1),      # padding beyond the reach
    (2, 4, 6, 5, 4, (2, 5), (3, 1), (0, 3), (2, 1), 2),      # non-square kernel
    (5, 4, 10, 10, 8, (3, 3), (2, 2), (1, 1), (1, 1), 1),    # N=5: chunks cross images
]


def case_id(c):
    N, C, H, W, OC, K, s, p, d, G = c
    return f"N{N}C{C}x{H}x{W}-OC{OC}-k{K[0]}x{K[1]}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-d{d[0]}{d[1]}-g{G}"


def draw(c, seed=0):
    N, C, H, W, OC, K, s, p, d, G = c
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    oh, ow = out_size(H, K[0], s[0], p[0], d[0]), out_size(W, K[1], s[1], p[1], d[1])
    dy = rng.standard_normal((N, OC, oh, ow)).astype(np.float32)
    wshape = (OC, C // G, K[0], K[1])
    ref = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), wshape,
                                      torch.from_numpy(dy).double(), s, p, d, G).numpy()
    return x, dy, wshape, ref


def set_dw_env(monkeypatch, mode, budget):
    """ET_CONV_DW = mode; ET_CONV_DW_BUDGET = budget (None: unset, the default)."""
    monkeypatch.setenv("ET_CONV_DW", mode)
    if budget is None:
        monkeypatch.delenv("ET_CONV_DW_BUDGET", raising=False)
    else:
        monkeypatch.setenv("ET_CONV_DW_BUDGET", budget)


def dw_of(monkeypatch, mode, budget, c, x, dy, wshape, backend):
    set_dw_env(monkeypatch, mode, budget)
    _, _, _, _, _, _, s, p, d, G = c
    return _C.conv2d_backward_weight(dy, x, wshape, s, p, d, G, backend)


def jobs_run(fn):
    before = _C.default_queue_stats()
    out = fn()
    after = _C.default_queue_stats()
    return after["submitted"] - before["submitted"], out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_gemm_matches_torch_and_conv(monkeypatch, backend, c):
    x, dy, wshape, ref = draw(c)
    conv = dw_of(monkeypatch, "conv", None, c, x, dy, wshape, backend)
    assert rel_err(conv, ref) <= TOL
    # the default budget (one chunk for these sizes) and one output row per chunk
    # (N*OH chunks: chunk edges inside and across images, CPU sums of partials)
    N, C, H, W, OC, K, s, p, d, G = c
    three_rows = str(3 * (C * K[0] * K[1] + OC) * dy.shape[3] * 4)   # chunk budget: 3 rows
    for budget in (None, TINY, three_rows):
        gemm = dw_of(monkeypatch, "gemm", budget, c, x, dy, wshape, backend)
        assert gemm.dtype == np.float32 and gemm.shape == wshape
        err_t, err_c = rel_err(gemm, ref), rel_err(gemm, conv)
        assert err_t <= TOL, (budget, err_t)
        assert err_c <= TOL, (budget, err_c)


@pytest.mark.skipif(not HAVE_QUEUE_STATS, reason="_C.default_queue_stats (queue binding) not built")
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_switch_selects_the_formulation(monkeypatch, backend):
    # groups 2, N*OH = 3*5 output rows: conv = 1 conv job, gemm = G matmuls per chunk
    c = (3, 4, 11, 10, 6, (3, 3), (2, 3), (1, 0), (2, 1), 2)
    x, dy, wshape, ref = draw(c)
    oh = dy.shape[2]
    n, dw = jobs_run(lambda: dw_of(monkeypatch, "conv", None, c, x, dy, wshape, backend))
    assert n == 1 and rel_err(dw, ref) <= TOL
    n, dw = jobs_run(lambda: dw_of(monkeypatch, "gemm", None, c, x, dy, wshape, backend))
    assert n == 2 and rel_err(dw, ref) <= TOL           # one chunk, two groups
    n, dw = jobs_run(lambda: dw_of(monkeypatch, "gemm", TINY, c, x, dy, wshape, backend))
    assert n == 2 * 3 * oh and rel_err(dw, ref) <= TOL  # a chunk per output row


@pytest.mark.skipif(not HAVE_QUEUE_STATS, reason="_C.default_queue_stats (queue binding) not built")
def test_auto_rule(monkeypatch):
    # resnet-like layer: ref keeps conv (the oracle), the others use gemm
    big = (2, 16, 14, 14, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    # depthwise on a small map: 2*1*9*(N*OH*OW = 2*3*3) = 324 FLOPs per job < 32 KFLOP
    tiny = (2, 8, 3, 3, 8, (3, 3), (1, 1), (1, 1), (1, 1), 8)
    for c, want_gemm in ((big, True), (tiny, False)):
        x, dy, wshape, ref = draw(c)
        for be in BACKENDS:
            for mode in ("auto", ""):   # empty = unset = auto
                n, dw = jobs_run(lambda: dw_of(monkeypatch, mode, None, c, x, dy, wshape, be))
                gemm = want_gemm and be != "ref"
                assert n == (c[9] if gemm else 1), (c, be, mode, n)
                assert rel_err(dw, ref) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_backward_with_gemm(monkeypatch, backend):
    # dx, dw, db together (dw chunked while dx's conv job is in flight) vs autograd
    N, C, H, W, OC, K, s, p, d, G = 3, 4, 9, 8, 6, (3, 3), (2, 1), (1, 2), (1, 2), 2
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((OC, C // G) + K).astype(np.float32)
    tx = torch.from_numpy(x).double().requires_grad_(True)
    tw = torch.from_numpy(w).double().requires_grad_(True)
    tb = torch.zeros(OC, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(tx, tw, tb, s, p, d, G)
    dy = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(torch.from_numpy(dy).double())
    for budget in (None, TINY):
        monkeypatch.setenv("ET_CONV_DW", "gemm")
        if budget:
            monkeypatch.setenv("ET_CONV_DW_BUDGET", budget)
        dx, dw, db = _C.conv2d_backward(dy, x, w, s, p, d, G, True, True, True, backend)
        assert rel_err(dx, tx.grad) <= TOL
        assert rel_err(dw, tw.grad) <= TOL
        assert rel_err(db, tb.grad) <= TOL


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_autograd_same_padding_even_kernel(monkeypatch, backend):
    # padding="same" with an even kernel: the functional layer pads the extra
    # bottom/right row explicitly (asymmetric padding), then convolves
    monkeypatch.setenv("ET_CONV_DW", "gemm")
    monkeypatch.setenv("ET_CONV_DW_BUDGET", TINY)
    rng = np.random.default_rng(2)
    xn = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    wn = rng.standard_normal((4, 3, 4, 2)).astype(np.float32)
    with et.backend(backend):
        x = et.tensor(xn, requires_grad=True)
        w = et.tensor(wn, requires_grad=True)
        et.nn.functional.conv2d(x, w, padding="same").sum().backward()
    tx = torch.from_numpy(xn).double().requires_grad_(True)
    tw = torch.from_numpy(wn).double().requires_grad_(True)
    torch.nn.functional.conv2d(tx, tw, padding="same").sum().backward()
    assert rel_err(w.grad.numpy(), tw.grad) <= TOL
    assert rel_err(x.grad.numpy(), tx.grad) <= TOL


@pytest.mark.parametrize("var, value", [("ET_CONV_DW", "fast"), ("ET_CONV_DW_BUDGET", "0"),
                                        ("ET_CONV_DW_BUDGET", "12MiB"),
                                        ("ET_CONV_DW_BUDGET", "-5")])
def test_bad_environment_is_a_clear_error(monkeypatch, var, value):
    c = CASES[0]
    x, dy, wshape, _ = draw(c)
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=rf"conv2d_backward_weight: environment variable "
                                         rf"{var} must be .*got '{value}'"):
        _C.conv2d_backward_weight(dy, x, wshape, 1, 1, 1, 1, BACKENDS[-1])


@pytest.mark.skipif(not hasattr(et, "profiler"), reason="et.profiler not available")
def test_profiled_gemm_jobs_carry_the_pass_flops(monkeypatch):
    # the matmul jobs are labelled conv2d.bwd_weight and their FLOPs add up to
    # the pass's useful 2*N*OC*OH*OW*(C/G)*KH*KW
    monkeypatch.setenv("ET_CONV_DW", "gemm")
    monkeypatch.setenv("ET_CONV_DW_BUDGET", TINY)
    c = (2, 4, 6, 6, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2)
    x, dy, wshape, ref = draw(c)
    with et.profiler.profile() as prof:
        dw = _C.conv2d_backward_weight(dy, x, wshape, 1, 1, 1, 2, BACKENDS[-1])
    assert rel_err(dw, ref) <= TOL
    jobs = [e for e in prof.events if e["kind"] == "job"]
    assert jobs and all(j["name"] == "conv2d.bwd_weight" for j in jobs)
    N, C, H, W, OC, K, s, p, d, G = c
    assert len(jobs) == G * N * dy.shape[2]
    assert sum(j["flops"] for j in jobs) == 2 * N * OC * dy.shape[2] * dy.shape[3] * (C // G) * 9


# ---- bf16 / fp16 weight gradients (csrc/ops/conv2d_lowp.c, shared conv2d_dw.c) ----------
#
# The low-precision backward converts x and dy to bf16 / fp16 (round to nearest
# even) and then runs either formulation on the SAME converted operands. A product
# of two bf16 (8-bit significands) or two fp16 (11-bit) values is exact in fp32
# (16 / 22 <= 24 bits, and far from fp32's under/overflow for these data), and every
# backend accumulates in fp32 (backend.h: bf16/f16 x bf16/f16 -> f32). So conv and
# gemm differ only in the fp32 summation order, exactly as in fp32: both must equal
# torch float64 of the same rounded operands within the fp32 tolerance TOL = 1e-5
# (and so each other within 2*TOL). A wrong tap or a dropped chunk moves entries by
# O(1) of max |ref|, and a missing conversion (f32 operands) by ~2^-9 (bf16) or
# ~2^-12 (fp16) relative per operand, far above 1e-5 summed over these reductions.
# Against torch fp32 of the unrounded operands: cosine >= 0.9999 (issue 3, as
# tests/test_lowp_ops.py).
LOWP = ["bf16", "fp16"]
COS_MIN = 0.9999


def lowp_dw(monkeypatch, mode, budget, c, x, dy, prec, backend, dx=False, db=False):
    set_dw_env(monkeypatch, mode, budget)
    N, C, H, W, OC, K, s, p, d, G = c
    w = np.zeros((OC, C // G) + K, np.float32)   # read for dx only
    return _C.conv2d_backward_lowp(dy, x, w, s, p, d, G, dx, True, db, prec, prec, 0, 0, backend)


def rounded_ref(c, x, dy, prec):
    """torch float64 dw of the operands rounded to `prec` (what both formulations multiply)."""
    N, C, H, W, OC, K, s, p, d, G = c
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16}[prec]
    xq = torch.from_numpy(x).to(tdt).double()
    dq = torch.from_numpy(dy).to(tdt).double()
    return torch.nn.grad.conv2d_weight(xq, (OC, C // G) + K, dq, s, p, d, G).numpy()


def cosine(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


@pytest.mark.parametrize("prec", LOWP)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_lowp_gemm_matches_conv_and_torch(monkeypatch, backend, prec, c):
    x, dy, wshape, ref32 = draw(c)
    refq = rounded_ref(c, x, dy, prec)
    conv = lowp_dw(monkeypatch, "conv", None, c, x, dy, prec, backend)[1]
    assert rel_err(conv, refq) <= TOL
    N, C, H, W, OC, K, s, p, d, G = c
    three_rows = str(3 * (C * K[0] * K[1] + OC) * dy.shape[3] * 2)   # 2-byte elements: 3 rows
    for budget in (None, TINY, three_rows):
        gemm = lowp_dw(monkeypatch, "gemm", budget, c, x, dy, prec, backend)[1]
        assert gemm.dtype == np.float32 and gemm.shape == wshape
        err_q, err_c = rel_err(gemm, refq), rel_err(gemm, conv)
        assert err_q <= TOL, (budget, err_q)
        assert err_c <= 2 * TOL, (budget, err_c)
        cs = cosine(gemm, ref32)
        assert cs >= COS_MIN, (budget, cs)


@pytest.mark.skipif(not HAVE_QUEUE_STATS, reason="_C.default_queue_stats (queue binding) not built")
@pytest.mark.parametrize("prec", LOWP + ["fp32", "int8"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lowp_switch_selects_the_formulation(monkeypatch, backend, prec):
    # as test_the_switch_selects_the_formulation; int8 keeps the conv formulation
    # whatever ET_CONV_DW says (1 job: this batch is far below its int32 chunking)
    c = (3, 4, 11, 10, 6, (3, 3), (2, 3), (1, 0), (2, 1), 2)
    x, dy, wshape, ref = draw(c)
    oh = dy.shape[2]
    jobs = {}
    for mode, budget in (("conv", None), ("gemm", None), ("gemm", TINY)):
        n, out = jobs_run(lambda: lowp_dw(monkeypatch, mode, budget, c, x, dy, prec, backend))
        jobs[(mode, budget)] = n
        assert cosine(out[1], ref) >= (0.995 if prec == "int8" else COS_MIN)
    if prec == "int8":
        assert set(jobs.values()) == {1}, jobs
    else:
        assert jobs == {("conv", None): 1, ("gemm", None): 2, ("gemm", TINY): 2 * 3 * oh}, jobs


@pytest.mark.skipif(not HAVE_QUEUE_STATS, reason="_C.default_queue_stats (queue binding) not built")
def test_lowp_budget_counts_two_byte_elements(monkeypatch):
    # a budget of 3 f32 rows holds 6 bf16 rows: 2*N*OH/6 chunks of G matmuls, not /3
    c = (2, 4, 12, 12, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1)   # N*OH = 24 rows
    x, dy, wshape, ref = draw(c)
    N, C, H, W, OC, K, s, p, d, G = c
    three_f32_rows = str(3 * (C * 9 + OC) * dy.shape[3] * 4)
    for prec, want in (("bf16", 24 // 6), ("fp16", 24 // 6), ("fp32", 24 // 3)):
        n, out = jobs_run(lambda: lowp_dw(monkeypatch, "gemm", three_f32_rows, c, x, dy, prec,
                                          BACKENDS[-1]))
        assert n == want, (prec, n)
        assert cosine(out[1], ref) >= COS_MIN


@pytest.mark.skipif(not HAVE_QUEUE_STATS, reason="_C.default_queue_stats (queue binding) not built")
@pytest.mark.parametrize("prec", LOWP)
def test_lowp_auto_rule(monkeypatch, prec):
    # the fp32 rule: gemm except on ref and for jobs under 32 KFLOP
    big = (2, 16, 14, 14, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    tiny = (2, 8, 3, 3, 8, (3, 3), (1, 1), (1, 1), (1, 1), 8)
    for c, want_gemm in ((big, True), (tiny, False)):
        x, dy, wshape, ref = draw(c)
        for be in BACKENDS:
            for mode in ("auto", ""):
                n, out = jobs_run(lambda: lowp_dw(monkeypatch, mode, None, c, x, dy, prec, be))
                gemm = want_gemm and be != "ref"
                assert n == (c[9] if gemm else 1), (c, be, mode, n)
                assert cosine(out[1], ref) >= COS_MIN


@pytest.mark.parametrize("prec", LOWP)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lowp_full_backward_with_gemm(monkeypatch, backend, prec):
    # dx, dw, db together (dw chunked while the dx conv job is in flight): dx and db
    # are the same bits as with the conv formulation, dw within the rounding above,
    # and no bf16/f16 matmul falls back to ref on a backend that lists it
    c = (3, 4, 9, 8, 6, (3, 3), (2, 1), (1, 2), (1, 2), 2)
    x, dy, wshape, ref32 = draw(c, seed=1)
    N, C, H, W, OC, K, s, p, d, G = c
    w = np.random.default_rng(3).standard_normal(wshape).astype(np.float32)
    refq = rounded_ref(c, x, dy, prec)

    def run(mode, budget):
        monkeypatch.setenv("ET_CONV_DW", mode)
        monkeypatch.setenv("ET_CONV_DW_BUDGET", budget or "16777216")
        return _C.conv2d_backward_lowp(dy, x, w, s, p, d, G, True, True, True, prec, prec, 0, 0,
                                       backend)

    dx0, dw0, db0 = run("conv", None)
    _C.reset_fallback_stats()
    for budget in (None, TINY):
        dx, dw, db = run("gemm", budget)
        assert np.array_equal(dx, dx0) and np.array_equal(db, db0)
        assert rel_err(dw, refq) <= TOL and rel_err(dw, dw0) <= 2 * TOL
    assert not any("/matmul/" in k for k in _C.fallback_stats()), _C.fallback_stats()


def test_lowp_bad_environment_is_a_clear_error(monkeypatch):
    c = CASES[0]
    x, dy, wshape, _ = draw(c)
    monkeypatch.setenv("ET_CONV_DW", "fast")
    with pytest.raises(ValueError, match=r"conv2d_backward_lowp: environment variable "
                                         r"ET_CONV_DW must be .*got 'fast'"):
        lowp_dw(monkeypatch, "fast", None, c, x, dy, "bf16", BACKENDS[-1])


@pytest.mark.skipif(not HAVE_QUEUE_STATS, reason="_C.default_queue_stats (queue binding) not built")
@pytest.mark.parametrize("backend", BACKENDS)
def test_lowp_gemm_from_saved_xq(monkeypatch, backend):
    # int8-mixed: the bf16 dw pass from the forward's saved int8 x (x=None) runs the
    # gemm formulation on the dequantized, then converted x: the same bits as from
    # the dequantized x given directly
    monkeypatch.setenv("ET_CONV_DW", "gemm")
    monkeypatch.setenv("ET_CONV_DW_BUDGET", TINY)
    c = (3, 4, 11, 10, 6, (3, 3), (2, 3), (1, 0), (2, 1), 2)
    x, dy, wshape, ref = draw(c)
    N, C, H, W, OC, K, s, p, d, G = c
    w = np.random.default_rng(4).standard_normal(wshape).astype(np.float32)
    _, xq, sx = _C.conv2d_forward_lowp(x, w, None, s, p, d, G, "int8", backend, return_xq=True)
    n, (_, dwq, _) = jobs_run(lambda: _C.conv2d_backward_lowp(
        dy, None, w, s, p, d, G, False, True, False, "int8", "bf16", 0, 0, backend,
        x_q=xq, x_scale=sx))
    assert n == G * N * dy.shape[2]   # gemm: a chunk per output row
    xd = _C.dequantize(xq, sx)
    dwd = _C.conv2d_backward_lowp(dy, xd, w, s, p, d, G, False, True, False, "int8", "bf16", 0, 0,
                                  backend)[1]
    assert np.array_equal(dwq, dwd)
    assert cosine(dwq, ref) >= 0.995   # x carries its int8 rounding here
