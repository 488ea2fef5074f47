"""Low-precision forward primitives (matmul_lowp, conv2d_primitive_lowp) on
every backend, the ref fallback and its counters, and the dtype checks.

- int8 (u8|s8 x s8 -> int32, no scales): must EQUAL an int64 NumPy
  reference exactly (explicit im2col + einsum in int64), all transposes,
  full u8/s8 ranges (the onednn backend must stay exact on CPUs without
  VNNI, where oneDNN's int16 pair sums saturate: see onednn.c), and with
  7-bit activations (oneDNN's single-run path there).
- bf16 / f16 (-> float32): vs a float64 reference of the SAME rounded
  inputs; products are exact in f32, so only f32 accumulation error
  remains: max|err| <= 1e-5 * max|ref|.
- blas has no integer gemm: its int8 calls run on ref, counted per
  (backend, op, dtype) and reported once by fallback_warnings().
- the onednn primitive cache keys include the dtypes.
The int8 / fp32 onednn speed ratios are printed (run with -s), not asserted.
"""
import time

import numpy as np
import pytest

from edgetrain import _C

BACKENDS = _C.backends()
FTOL = 1e-5


def to_bf16_bits(x):
    """float32 -> bfloat16 bits (round to nearest even), as numpy uint16."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_f64(b):
    return (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def int_operands(rng, shape, dt, reduced=False):
    if dt == np.uint8:
        return rng.integers(0, 128 if reduced else 256, shape).astype(np.uint8)
    return rng.integers(-128, 128, shape).astype(np.int8)


def conv_ref(x, w, stride, pad_lo, pad_hi, dil, groups, acc):
    """Exact conv by explicit im2col in `acc` (int64 or float64)."""
    x = np.pad(x.astype(acc), ((0, 0), (0, 0), (pad_lo[0], pad_hi[0]), (pad_lo[1], pad_hi[1])))
    w = w.astype(acc)
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    OH = (H - dil[0] * (KH - 1) - 1) // stride[0] + 1
    OW = (W - dil[1] * (KW - 1) - 1) // stride[1] + 1
    cols = np.empty((N, C, KH, KW, OH, OW), acc)
    for kh in range(KH):
        for kw in range(KW):
            h0, w0 = kh * dil[0], kw * dil[1]
            cols[:, :, kh, kw] = x[:, :, h0:h0 + stride[0] * (OH - 1) + 1:stride[0],
                                   w0:w0 + stride[1] * (OW - 1) + 1:stride[1]]
    G, OCg = groups, OC // groups
    y = np.empty((N, OC, OH, OW), acc)
    for g in range(G):
        y[:, g * OCg:(g + 1) * OCg] = np.einsum(
            "nckhij,ockh->noij", cols[:, g * Cg:(g + 1) * Cg], w[g * OCg:(g + 1) * OCg])
    return y


# (N, C, H, W, OC, KH, KW, stride, pad_lo, pad_hi, dilation, groups)
CONV_CASES = [
    (2, 3, 9, 7, 5, 3, 3, (1, 1), (1, 1), (1, 1), (1, 1), 1),
    (1, 4, 11, 10, 6, 3, 2, (2, 1), (0, 1), (2, 0), (1, 1), 2),
    (2, 6, 13, 12, 6, 3, 3, (1, 2), (2, 2), (2, 1), (2, 2), 6),      # depthwise, dilated
    (3, 8, 7, 9, 4, 1, 1, (1, 1), (0, 0), (0, 0), (1, 1), 1),        # 1x1
    (2, 5, 8, 8, 7, 5, 5, (3, 3), (2, 1), (1, 2), (1, 1), 1),
    (4, 16, 5, 5, 3, 3, 3, (1, 1), (0, 0), (0, 0), (1, 1), 1),       # tiny OHW (backward-weight-like)
    (2, 64, 10, 10, 32, 3, 3, (1, 1), (1, 1), (1, 1), (1, 1), 2),    # long reduction
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("adt", [np.uint8, np.int8])
@pytest.mark.parametrize("reduced", [False, True])
def test_int8_matmul_exact(backend, adt, reduced):
    rng = np.random.default_rng(11)
    for (M, K, N) in [(1, 1, 1), (7, 13, 5), (37, 300, 53), (64, 1031, 17), (3, 2048, 70)]:
        for ta in (False, True):
            for tb in (False, True):
                a = int_operands(rng, (K, M) if ta else (M, K), adt, reduced)
                b = int_operands(rng, (N, K) if tb else (K, N), np.int8)
                y = _C.matmul_lowp(a, b, trans_a=ta, trans_b=tb, backend=backend)
                A = a.astype(np.int64).T if ta else a.astype(np.int64)
                B = b.astype(np.int64).T if tb else b.astype(np.int64)
                assert y.dtype == np.int32 and y.shape == (M, N)
                assert np.array_equal(y.astype(np.int64), A @ B), (backend, adt, M, K, N, ta, tb)


def test_int8_matmul_extremes():
    """All operands at the corners (-128 . -128, 255 . -128): largest pair sums."""
    for backend in BACKENDS:
        for adt, av in [(np.uint8, 255), (np.int8, -128)]:
            a = np.full((5, 333), av, adt)
            b = np.full((333, 4), -128, np.int8)
            y = _C.matmul_lowp(a, b, backend=backend)
            assert (y == 333 * av * -128).all(), (backend, adt)


def signed_7bit(rng, shape, lo=-64):
    return rng.integers(lo, 64, shape).astype(np.int8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("adt", [np.uint8, np.int8, "u8-7bit", "s8-7bit", "s8-nonneg"])
def test_int8_conv_exact(backend, adt):
    """Full ranges (onednn: nibble-split weights), 7-bit sources (onednn: one
    run), signed sources (onednn: shifted to u8, padding materialized with the
    shift, compensated) and s8 sources that happen to be >= 0 (no shift)."""
    rng = np.random.default_rng(5)
    for (N, C, H, W, OC, KH, KW, s, pl, ph, d, G) in CONV_CASES:
        shape = (N, C, H, W)
        if adt == "u8-7bit":
            x = int_operands(rng, shape, np.uint8, reduced=True)
        elif adt == "s8-7bit":
            x = signed_7bit(rng, shape)
        elif adt == "s8-nonneg":
            x = signed_7bit(rng, shape, lo=0)
        else:
            x = int_operands(rng, shape, adt)
        w = int_operands(rng, (OC, C // G, KH, KW), np.int8)
        y = _C.conv2d_primitive_lowp(x, w, None, s, pl, ph, d, G, "int8", backend)
        ref = conv_ref(x, w, s, pl, ph, d, G, np.int64)
        assert y.dtype == np.int32 and y.shape == ref.shape
        assert np.array_equal(y.astype(np.int64), ref), (backend, adt, N, C, H, W, OC, KH, KW, G)


def test_int8_conv_extremes():
    """Corner operands (255 . -128, -128 . -128) with padding: the largest
    pair sums, and a shifted source whose padding must hold the shift."""
    for backend in BACKENDS:
        for adt, av in [(np.uint8, 255), (np.int8, -128), (np.int8, 127)]:
            x = np.full((2, 37, 5, 6), av, adt)
            w = np.full((3, 37, 3, 3), -128, np.int8)
            y = _C.conv2d_primitive_lowp(x, w, None, (1, 1), (1, 1), (1, 1), (1, 1), 1, "int8", backend)
            ref = conv_ref(x, w, (1, 1), (1, 1), (1, 1), (1, 1), 1, np.int64)
            assert np.array_equal(y.astype(np.int64), ref), (backend, adt, av)


def _float_operands(rng, shape, prec):
    x = rng.standard_normal(shape).astype(np.float32)
    if prec == "bfloat16":
        bits = to_bf16_bits(x)
        return bits, bf16_to_f64(bits)
    h = x.astype(np.float16)
    return h, h.astype(np.float64)


def rel_err(got, ref):
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prec", ["bfloat16", "float16"])
def test_float_lowp_matmul(backend, prec):
    rng = np.random.default_rng(3)
    for (M, K, N, bias) in [(1, 1, 1, True), (13, 17, 11, False), (37, 300, 53, True),
                            (64, 1031, 17, False)]:
        for ta in (False, True):
            for tb in (False, True):
                a, a64 = _float_operands(rng, (K, M) if ta else (M, K), prec)
                b, b64 = _float_operands(rng, (N, K) if tb else (K, N), prec)
                bb = rng.standard_normal(N).astype(np.float32) if bias else None
                y = _C.matmul_lowp(a, b, trans_a=ta, trans_b=tb, bias=bb, backend=backend,
                                   dtype=prec)
                ref = (a64.T if ta else a64) @ (b64.T if tb else b64)
                if bias:
                    ref = ref + bb.astype(np.float64)
                assert y.dtype == np.float32 and y.shape == (M, N)
                assert rel_err(y, ref) <= FTOL, (backend, prec, M, K, N, ta, tb)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prec", ["bfloat16", "float16"])
def test_float_lowp_conv(backend, prec):
    rng = np.random.default_rng(4)
    for i, (N, C, H, W, OC, KH, KW, s, pl, ph, d, G) in enumerate(CONV_CASES):
        x, x64 = _float_operands(rng, (N, C, H, W), prec)
        w, w64 = _float_operands(rng, (OC, C // G, KH, KW), prec)
        bias = rng.standard_normal(OC).astype(np.float32) if i % 2 else None
        y = _C.conv2d_primitive_lowp(x, w, bias, s, pl, ph, d, G, prec, backend)
        ref = conv_ref(x64, w64, s, pl, ph, d, G, np.float64)
        if bias is not None:
            ref = ref + bias.astype(np.float64)[None, :, None, None]
        assert y.dtype == np.float32 and y.shape == ref.shape
        assert rel_err(y, ref) <= FTOL, (backend, prec, i)


def test_f16_special_values_widen_exactly():
    """Subnormal, max and zero f16 values survive the f32 widening: 1x1
    products with 1.0 return them unchanged on every backend (a -0 product
    may come back +0: accumulators start at +0)."""
    vals = np.array([6e-8, -6e-8, 65504.0, -0.0, 1e-5, 0.333], np.float16)
    one = np.ones((1, 1), np.float16)
    for backend in BACKENDS:
        y = _C.matmul_lowp(vals.reshape(-1, 1), one, backend=backend)
        assert np.array_equal(y.ravel(), vals.astype(np.float32)), backend


@pytest.mark.skipif("blas" not in BACKENDS, reason="blas backend not built here")
def test_blas_int8_falls_back_to_ref_counted_and_warned_once():
    assert not _C.backend_supports("blas", "matmul", "int8")
    assert not _C.backend_supports("blas", "conv2d", "uint8")
    assert _C.backend_supports("ref", "conv2d", "int8")
    _C.reset_fallback_stats()
    rng = np.random.default_rng(0)
    a = int_operands(rng, (4, 9), np.uint8)
    b = int_operands(rng, (9, 3), np.int8)
    for _ in range(2):
        assert np.array_equal(_C.matmul_lowp(a, b, backend="blas"),
                              a.astype(np.int64) @ b.astype(np.int64))
    x = int_operands(rng, (1, 2, 5, 5), np.int8)
    w = int_operands(rng, (3, 2, 3, 3), np.int8)
    _C.conv2d_primitive_lowp(x, w, None, 1, 0, 0, 1, 1, "int8", "blas")
    _C.matmul_lowp(a, b, backend="ref")          # ref itself: no fallback
    _C.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), backend="blas")
    assert _C.fallback_stats() == {"blas/matmul/u8": 2, "blas/conv2d/s8": 1}
    detail = _C.fallback_stats(detail=True)
    assert detail["blas/matmul/u8"] == {"count": 2, "warned": False}
    msgs = _C.fallback_warnings()
    assert len(msgs) == 2 and all("ref" in m and "blas" in m for m in msgs)
    assert _C.fallback_warnings() == []           # warned once
    _C.matmul_lowp(a, b, backend="blas")
    assert _C.fallback_warnings() == []
    assert _C.fallback_stats(detail=True)["blas/matmul/u8"] == {"count": 3, "warned": True}
    _C.reset_fallback_stats()
    assert _C.fallback_stats() == {}


@pytest.mark.skipif("onednn" not in BACKENDS, reason="onednn backend not built here")
def test_onednn_runs_every_combination_itself():
    _C.reset_fallback_stats()
    rng = np.random.default_rng(1)
    for dt in ["int8", "uint8", "bfloat16", "float16", "float32"]:
        assert _C.backend_supports("onednn", "matmul", dt)
    for dt in ["int8", "uint8", "bfloat16", "float16", "float32"]:
        assert _C.backend_supports("onednn", "conv2d", dt)
    a = int_operands(rng, (4, 9), np.int8)
    _C.matmul_lowp(a, a.T.copy(), backend="onednn")
    x = int_operands(rng, (2, 3, 6, 6), np.uint8)
    w = int_operands(rng, (4, 3, 3, 3), np.int8)
    _C.conv2d_primitive_lowp(x, w, None, 1, 1, 1, 1, 1, "int8", "onednn")
    assert _C.fallback_stats() == {}


@pytest.mark.skipif("onednn" not in BACKENDS, reason="onednn backend not built here")
def test_onednn_cache_keys_separate_dtypes():
    """int8 and f32 matmuls of one shape are two cache entries."""
    rng = np.random.default_rng(2)
    _C.clear_cache()
    a8 = int_operands(rng, (6, 10), np.uint8)
    b8 = int_operands(rng, (10, 7), np.int8)
    af = rng.standard_normal((6, 10)).astype(np.float32)
    bf = rng.standard_normal((10, 7)).astype(np.float32)
    _C.matmul_lowp(a8, b8, backend="onednn")
    _C.matmul(af, bf, backend="onednn")
    s = _C.cache_stats()
    assert s["size"] == 2 and s["misses"] == 2 and s["hits"] == 0, s
    _C.matmul_lowp(a8 // 2 + 1, b8, trans_b=False, backend="onednn")
    assert _C.cache_stats()["size"] == 2            # same shape and dtypes: a hit
    bt = np.ascontiguousarray(b8.T)
    _C.matmul_lowp(a8, bt, trans_b=True, backend="onednn")
    assert _C.cache_stats()["size"] == 3            # transposed weights: another primitive
    # an s8 source runs shifted to u8 on CPUs without VNNI (onednn.c), so it
    # shares the u8 primitive there; with VNNI it is its own primitive
    _C.matmul_lowp(a8.view(np.int8), b8, backend="onednn")
    _C.matmul_lowp(a8, b8, backend="onednn")
    _C.matmul(af, bf, backend="onednn")
    s = _C.cache_stats()
    assert s["size"] in (3, 4) and s["hits"] >= 3, s
    _C.clear_cache()


def test_bad_dtype_combinations():
    u8 = np.ones((3, 4), np.uint8)
    s8 = np.ones((4, 2), np.int8)
    f16 = np.ones((4, 2), np.float16)
    with pytest.raises(TypeError, match="b must be int8"):
        _C.matmul_lowp(u8, np.ones((4, 2), np.uint8))
    with pytest.raises(NotImplementedError, match="no bias"):
        _C.matmul_lowp(u8, s8, bias=np.ones(2, np.float32))
    with pytest.raises(TypeError, match="float16"):
        _C.matmul_lowp(np.ones((3, 4), np.float16), np.ones((4, 2), np.float32))
    with pytest.raises(TypeError, match="bfloat16"):
        _C.matmul_lowp(np.ones((3, 4), np.uint16), np.ones((4, 2), np.uint16))
    with pytest.raises(TypeError, match="uint16"):
        _C.matmul_lowp(np.ones((3, 4), np.float16), f16, dtype="bfloat16")
    with pytest.raises(TypeError, match="int32"):
        _C.matmul_lowp(np.ones((3, 4), np.int32), s8)
    with pytest.raises(TypeError, match="dtype must be"):
        _C.matmul_lowp(u8, s8, dtype="int4")
    with pytest.raises(TypeError, match="uint8 or int8"):
        _C.matmul_lowp(np.ones((3, 4), np.float32), s8, dtype="int8")
    with pytest.raises(TypeError, match="bias"):
        _C.matmul_lowp(np.ones((3, 4), np.float16), f16, bias=np.ones(2, np.float16))
    with pytest.raises(TypeError):
        _C.conv2d_primitive_lowp(np.ones((1, 2, 4, 4), np.uint8), np.ones((3, 2, 3, 3), np.uint8),
                                 None, 1, 0, 0, 1, 1, "int8", "ref")
    with pytest.raises(NotImplementedError, match="no bias"):
        _C.conv2d_primitive_lowp(np.ones((1, 2, 4, 4), np.uint8), np.ones((3, 2, 3, 3), np.int8),
                                 np.ones(3, np.float32), 1, 0, 0, 1, 1, "int8", "ref")
    # shapes are still checked (ValueError naming them)
    with pytest.raises(ValueError, match="inner dims"):
        _C.matmul_lowp(u8, np.ones((5, 2), np.int8))
    # the fp32 entry points keep refusing low-precision arrays
    with pytest.raises(TypeError):
        _C.matmul(u8, s8)


def _bench(f, reps):
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps


@pytest.mark.skipif("onednn" not in BACKENDS, reason="onednn backend not built here")
def test_print_onednn_int8_vs_fp32_speed():
    """Printed, not asserted: timings depend on the machine and its load."""
    rng = np.random.default_rng(0)
    n = 1024
    a8 = int_operands(rng, (n, n), np.uint8)
    a7 = int_operands(rng, (n, n), np.uint8, reduced=True)
    b8 = int_operands(rng, (n, n), np.int8)
    af = rng.standard_normal((n, n)).astype(np.float32)
    bf = rng.standard_normal((n, n)).astype(np.float32)
    tf = _bench(lambda: _C.matmul(af, bf, backend="onednn"), 3)
    t8 = _bench(lambda: _C.matmul_lowp(a8, b8, backend="onednn"), 3)
    t7 = _bench(lambda: _C.matmul_lowp(a7, b8, backend="onednn"), 3)
    ops = 2.0 * n ** 3
    print(f"\nonednn matmul 1024^3: fp32 {tf * 1e3:.1f} ms ({ops / tf / 1e9:.0f} GFLOP/s), "
          f"int8 full-range u8 {t8 * 1e3:.1f} ms ({ops / t8 / 1e9:.0f} GOP/s, x{tf / t8:.2f}), "
          f"int8 7-bit u8 {t7 * 1e3:.1f} ms ({ops / t7 / 1e9:.0f} GOP/s, x{tf / t7:.2f})")
    x8 = int_operands(rng, (32, 64, 56, 56), np.uint8)
    x7 = int_operands(rng, (32, 64, 56, 56), np.uint8, reduced=True)
    w8 = int_operands(rng, (64, 64, 3, 3), np.int8)
    xf = rng.standard_normal((32, 64, 56, 56)).astype(np.float32)
    wf = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    cf = _bench(lambda: _C.conv2d_primitive(xf, wf, None, 1, 1, 1, 1, 1, "onednn"), 1)
    c8 = _bench(lambda: _C.conv2d_primitive_lowp(x8, w8, None, 1, 1, 1, 1, 1, "int8", "onednn"), 1)
    c7 = _bench(lambda: _C.conv2d_primitive_lowp(x7, w8, None, 1, 1, 1, 1, 1, "int8", "onednn"), 1)
    print(f"onednn conv N=32 C=64 56x56 3x3 -> 64: fp32 {cf * 1e3:.1f} ms, int8 full-range "
          f"{c8 * 1e3:.1f} ms (x{cf / c8:.2f}), 7-bit {c7 * 1e3:.1f} ms (x{cf / c7:.2f})")
    _C.reset_fallback_stats()
