"""Quantizers and 16-bit float conversions of the C core (csrc/quant/).

Every quantizer is compared bit for bit with a NumPy reference of the rules in
csrc/quant/quantize.h (float32 arithmetic, np.rint = round half to even,
saturation). fp16 conversions are compared bit for bit with NumPy's
astype(float16) and bf16 conversions with torch's .to(torch.bfloat16); both
the F16C path and the portable C path are checked. No tolerances except for
the statistical test of stochastic rounding (3 standard errors) and the
int8-GEMM sanity check against float32 (stated there).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import edgetrain._C as C

F32_TINY = np.float32(np.finfo(np.float32).tiny)
MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------- references
def ref_scale(m: float, qmax: int) -> np.float32:
    m = np.float32(m)
    if not m > 0:
        return np.float32(1.0)
    s = m / np.float32(qmax)
    return max(s, F32_TINY)


def ref_apply(x: np.ndarray, scale, lo: int, hi: int, dtype) -> np.ndarray:
    inv = np.float32(1.0) / np.float32(scale)
    v = x.astype(np.float32) * inv
    v = np.clip(v, np.float32(lo), np.float32(hi))
    return np.rint(v).astype(dtype)


def ref_per_tensor(x: np.ndarray, dtype: str):
    if dtype == "int8":
        s = ref_scale(np.abs(x).max(initial=0), 127)
        return ref_apply(x, s, -127, 127, np.int8), s
    s = ref_scale(max(x.max(initial=0), 0), 255)
    return ref_apply(x, s, 0, 255, np.uint8), s


def mix64(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def ref_uniform(seed: int, offset: int, n: int) -> np.ndarray:
    """u(i) of csrc/quant/rng.h."""
    with np.errstate(over="ignore"):
        off = mix64(np.array([(offset & MASK64) ^ 0xD1B54A32D192ED03], np.uint64))
        key = mix64(np.array([seed & MASK64], np.uint64) ^ off)
        i = np.arange(1, n + 1, dtype=np.uint64)
        b = mix64(key + i * np.uint64(0x9E3779B97F4A7C15))
    return (b >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)


def ref_stochastic(x: np.ndarray, seed: int, offset: int, qmax: int = 127):
    s = ref_scale(np.abs(x).max(initial=0), qmax)
    v = x.astype(np.float32) * (np.float32(1.0) / s)
    f = np.floor(v)
    u = ref_uniform(seed, offset, x.size).reshape(x.shape)
    r = f + (u < (v - f)).astype(np.float32)
    return np.clip(r, -qmax, qmax).astype(np.int8), s


def rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------- per-tensor int8/u8
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 11), (300007,), (64, 3, 32, 32)])
def test_per_tensor_bit_exact(dtype, shape):
    x = rand(shape, seed=len(shape), scale=3.0)
    if dtype == "uint8":
        x = np.maximum(x, 0)           # post-ReLU activations
    q, s = C.quantize_per_tensor(x, dtype)
    rq, rs = ref_per_tensor(x, dtype)
    assert q.dtype == rq.dtype and q.shape == x.shape
    assert s == float(rs)
    np.testing.assert_array_equal(q, rq)


def test_round_half_to_even_and_symmetric_range():
    # max|x| = 127 -> scale 1, so x*inv are exact ties
    x = np.array([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -127, 126.5], np.float32)
    q, s = C.quantize_per_tensor(x)
    assert s == 1.0
    np.testing.assert_array_equal(q, [127, 0, 2, 2, 0, -2, -2, 4, -127, 126])
    xu = np.array([255, 0.5, 1.5, 2.5, 254.5], np.float32)
    qu, su = C.quantize_per_tensor(xu, "uint8")
    assert su == 1.0
    np.testing.assert_array_equal(qu, [255, 0, 2, 2, 254])


def test_saturation_with_static_scale():
    x = np.array([-1000, -1.27, -1.275, 0, 1.2, 1.29, 5, 1e30, -1e30], np.float32)
    q, s = C.quantize_per_tensor(x, "int8", scale=0.01)
    assert s == float(np.float32(0.01))
    np.testing.assert_array_equal(q, ref_apply(x, np.float32(0.01), -127, 127, np.int8))
    assert q.min() == -127 and q.max() == 127          # -128 never produced
    qu, _ = C.quantize_per_tensor(x, "uint8", scale=0.01)
    np.testing.assert_array_equal(qu, ref_apply(x, np.float32(0.01), 0, 255, np.uint8))
    assert qu[0] == 0 and qu[7] == 255                 # negatives -> 0, overflow -> 255


def test_uint8_negative_values_saturate_to_zero():
    x = np.array([-3.0, -0.1, 0.0, 1.0, 2.0], np.float32)
    q, s = C.quantize_per_tensor(x, "uint8")
    assert s == float(np.float32(2.0) / np.float32(255))
    np.testing.assert_array_equal(q, ref_apply(x, s, 0, 255, np.uint8))
    assert q[0] == q[1] == q[2] == 0 and q[4] == 255
    q, s = C.quantize_per_tensor(-np.ones(4, np.float32), "uint8")  # no positive value
    assert s == 1.0 and not q.any()


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_all_zero_empty_constant(dtype):
    q, s = C.quantize_per_tensor(np.zeros((4, 5), np.float32), dtype)
    assert s == 1.0 and q.shape == (4, 5) and not q.any()
    q, s = C.quantize_per_tensor(np.zeros((0, 3), np.float32), dtype)
    assert s == 1.0 and q.shape == (0, 3)
    top = 127 if dtype == "int8" else 255
    q, s = C.quantize_per_tensor(np.full(1000, 3.7, np.float32), dtype)
    assert s == float(np.float32(3.7) / np.float32(top))
    assert (q == top).all()
    if dtype == "int8":
        q, s = C.quantize_per_tensor(np.full(10, -0.25, np.float32))
        assert (q == -127).all() and s == float(np.float32(0.25) / np.float32(127))


def test_tiny_values_use_the_floor_scale():
    x = np.array([1e-40, -3e-41, 0], np.float32)        # subnormal inputs
    q, s = C.quantize_per_tensor(x)
    rq, rs = ref_per_tensor(x, "int8")
    assert s == float(F32_TINY) == float(rs)
    np.testing.assert_array_equal(q, rq)


# ----------------------------------------------------------------- per channel
def test_per_channel_bit_exact():
    w = rand((16, 3, 3, 3), seed=3, scale=0.2)
    w[2] = 0                                              # all-zero channel
    w[5] = -0.125                                         # constant channel
    w[7, 0, 0, 0] = 40.0                                  # one outlier row
    q, scales = C.quantize_per_channel(w)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scales.dtype == np.float32 and scales.shape == (16,)
    for c in range(16):
        rq, rs = ref_per_tensor(w[c], "int8")
        assert scales[c] == rs, c
        np.testing.assert_array_equal(q[c], rq, err_msg=f"channel {c}")
    assert scales[2] == 1.0 and not q[2].any()
    assert (q[5] == -127).all()


def test_per_channel_large_and_degenerate_shapes():
    w = rand((1024, 300), seed=4)                         # threaded path
    q, scales = C.quantize_per_channel(w)
    rs = np.array([ref_scale(np.abs(r).max(), 127) for r in w], np.float32)
    np.testing.assert_array_equal(scales, rs)
    np.testing.assert_array_equal(q, ref_apply(w, rs[:, None], -127, 127, np.int8))
    q, s = C.quantize_per_channel(np.array([2.0, -0.5, 0.0], np.float32))   # (OC,)
    np.testing.assert_array_equal(q, [127, -127, 0])
    np.testing.assert_array_equal(s, np.array([2 / 127, 0.5 / 127, 1.0], np.float32))
    q, s = C.quantize_per_channel(np.zeros((3, 0), np.float32))
    assert q.shape == (3, 0) and (s == 1.0).all()


# ---------------------------------------------------------------- NaN and Inf
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fn", ["per_tensor", "uint8", "static", "per_channel", "stochastic"])
def test_nan_inf_raise_naming_index(fn, bad):
    x = rand((6, 7), seed=5)
    x[3, 2] = bad                                         # flat index 23
    x[5, 1] = bad                                         # a later one: not named
    call = {
        "per_tensor": lambda: C.quantize_per_tensor(x),
        "uint8": lambda: C.quantize_per_tensor(np.abs(x), "uint8"),
        "static": lambda: C.quantize_per_tensor(x, scale=0.1),
        "per_channel": lambda: C.quantize_per_channel(x),
        "stochastic": lambda: C.quantize_stochastic(x, 1, 2),
    }[fn]
    with pytest.raises(ValueError, match=r"input contains NaN/Inf at index 23 \("):
        call()


def test_nan_in_large_tensor_names_first_index():
    x = rand(300000, seed=6)
    x[250001] = np.nan
    x[270000] = np.inf
    with pytest.raises(ValueError, match="NaN/Inf at index 250001"):
        C.quantize_per_tensor(x)


# ------------------------------------------------------------ stochastic int8
def test_stochastic_bit_exact_and_in_floor_ceil():
    x = rand((37, 129), seed=7, scale=2.0)
    for seed, offset in [(0, 0), (1234, 5), (-1, 2 ** 63 + 7)]:
        q, s = C.quantize_stochastic(x, seed, offset)
        rq, rs = ref_stochastic(x, seed, offset)
        assert s == float(rs)
        np.testing.assert_array_equal(q, rq)
        v = x * (np.float32(1) / np.float32(s))
        assert np.all((q == np.floor(v)) | (q == np.ceil(v)))
    # exact multiples of the scale are never moved
    xi = np.arange(-127, 128, dtype=np.float32)
    q, s = C.quantize_stochastic(xi, 9, 9)
    assert s == 1.0
    np.testing.assert_array_equal(q, xi.astype(np.int8))


def test_stochastic_reproducible_and_offset_dependent():
    x = rand(5000, seed=8)
    a, _ = C.quantize_stochastic(x, 42, 3)
    b, _ = C.quantize_stochastic(x, 42, 3)
    c, _ = C.quantize_stochastic(x, 42, 4)
    d, _ = C.quantize_stochastic(x, 43, 3)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.2 and (a != d).mean() > 0.2   # ~1/2 expected


def test_stochastic_rounding_is_unbiased():
    """Mean error over 2000 draws (offsets 0..1999) within 3 standard errors.

    In quantized units the error of element i is q_i - v_i, a Bernoulli(frac_i)
    shifted by -frac_i: mean 0, variance frac_i(1 - frac_i). Round-to-nearest
    would fail both checks by far (its bias is up to 0.5 per element)."""
    draws = 2000
    x = rand(256, seed=9, scale=1.5)
    s = ref_scale(np.abs(x).max(), 127)
    v = (x * (np.float32(1) / s)).astype(np.float64)
    frac = v - np.floor(v)
    err = np.zeros(256)
    for off in range(draws):
        q, s2 = C.quantize_stochastic(x, 77, off)
        err += q - v
    mean_err = err / draws
    se = np.sqrt(frac * (1 - frac) / draws)
    # overall mean over all elements and draws
    se_all = np.sqrt((frac * (1 - frac)).sum() / draws) / 256
    assert abs(mean_err.mean()) < 3 * se_all, (mean_err.mean(), se_all)
    # per element (256 tests: 4.5 standard errors keeps the false-alarm rate ~1e-3)
    ok = (np.abs(mean_err) <= 4.5 * se + 1e-12)
    assert ok.all(), np.flatnonzero(~ok)


_THREAD_SCRIPT = r"""
import hashlib, numpy as np, edgetrain._C as C
x = (np.random.default_rng(11).standard_normal((300, 1001)) * 2).astype(np.float32)
h = hashlib.sha256()
h.update(C.quantize_stochastic(x, 5, 6)[0].tobytes())
h.update(C.quantize_per_tensor(x)[0].tobytes())
h.update(C.quantize_per_tensor(np.maximum(x, 0), "uint8")[0].tobytes())
h.update(C.quantize_per_channel(x)[0].tobytes())
h.update(C.to_float16(x).tobytes())
h.update(C.to_bfloat16(x).tobytes())
acc = (x * 1000).astype(np.int32)
h.update(C.dequantize_accumulator(acc, 0.5, np.ones(1001, np.float32), layout="mn").tobytes())
print(h.hexdigest())
"""


def test_results_independent_of_thread_count():
    outs = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        r = subprocess.run([sys.executable, "-c", _THREAD_SCRIPT], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.strip())
    assert outs[0] == outs[1]
    # and the same as in this process (whatever its thread count)
    x = (np.random.default_rng(11).standard_normal((300, 1001)) * 2).astype(np.float32)
    rq, _ = ref_stochastic(x, 5, 6)
    np.testing.assert_array_equal(C.quantize_stochastic(x, 5, 6)[0], rq)


# ------------------------------------------------------------------ dequantize
def test_dequantize_per_tensor_and_per_channel():
    rng = np.random.default_rng(12)
    q8 = rng.integers(-127, 128, (5, 6, 7), dtype=np.int8)
    u8 = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    s32 = rng.integers(-2 ** 31, 2 ** 31 - 1, (5, 6, 7), dtype=np.int32)
    s = np.float32(0.0123)
    sc = rng.random(5).astype(np.float32)
    for q in (q8, u8, s32):
        y = C.dequantize(q, float(s))
        assert y.dtype == np.float32 and y.shape == q.shape
        np.testing.assert_array_equal(y, q.astype(np.float32) * s)
        y = C.dequantize(q, sc)
        np.testing.assert_array_equal(y, q.astype(np.float32) * sc[:, None, None])
    # round trip: |dequant(quant(x)) - x| <= scale / 2
    x = rand((64, 50), seed=13)
    q, s = C.quantize_per_tensor(x)
    assert np.abs(C.dequantize(q, s) - x).max() <= s / 2 * (1 + 1e-6)
    q, sc = C.quantize_per_channel(x)
    assert (np.abs(C.dequantize(q, sc) - x) <= sc[:, None] / 2 * (1 + 1e-6)).all()


def test_dequantize_accumulator_layouts():
    rng = np.random.default_rng(14)
    sa = np.float32(0.021)
    acc = rng.integers(-2 ** 26, 2 ** 26, (9, 13), dtype=np.int32)
    sw = rng.random(13).astype(np.float32) + np.float32(0.01)
    b = rng.standard_normal(13).astype(np.float32)
    col = sa * sw                                          # float32 product first
    y = C.dequantize_accumulator(acc, float(sa), sw, b)
    np.testing.assert_array_equal(y, acc.astype(np.float32) * col + b)
    y = C.dequantize_accumulator(acc, float(sa), sw)
    np.testing.assert_array_equal(y, acc.astype(np.float32) * col)
    y = C.dequantize_accumulator(acc, float(sa), 0.5, b)   # per-tensor weight scale
    np.testing.assert_array_equal(y, acc.astype(np.float32) * (sa * np.float32(0.5)) + b)
    acc4 = rng.integers(-2 ** 20, 2 ** 20, (3, 13, 5, 6), dtype=np.int32)
    y = C.dequantize_accumulator(acc4, float(sa), sw, b, layout="nchw")
    np.testing.assert_array_equal(
        y, acc4.astype(np.float32) * col[None, :, None, None] + b[None, :, None, None])
    big = rng.integers(-1000, 1000, (8, 64, 33, 33), dtype=np.int32)   # threaded path
    swb = rng.random(64).astype(np.float32)
    y = C.dequantize_accumulator(big, float(sa), swb, layout="nchw")
    np.testing.assert_array_equal(y, big.astype(np.float32) * (sa * swb)[None, :, None, None])


def test_int8_gemm_epilogue_end_to_end():
    """u8 activations x s8 per-channel weights, int64 NumPy GEMM, epilogue:
    close to the float32 product (tolerance: 2% of the output range, the
    quantization noise of 8-bit operands with K = 256)."""
    x = np.maximum(rand((32, 256), seed=15), 0)
    w = rand((48, 256), seed=16, scale=0.1)
    b = rand(48, seed=17)
    qa, sa = C.quantize_per_tensor(x, "uint8")
    qw, sw = C.quantize_per_channel(w)
    acc = (qa.astype(np.int64) @ qw.astype(np.int64).T).astype(np.int32)
    y = C.dequantize_accumulator(acc, sa, sw, b)
    ref = x @ w.T + b
    assert np.abs(y - ref).max() < 0.02 * np.abs(ref).max()


# -------------------------------------------------------------- argument errors
def test_argument_errors():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="quantize_per_tensor: x must have dtype float32"):
        C.quantize_per_tensor(x.astype(np.float64))
    with pytest.raises(ValueError, match='dtype must be "int8" or "uint8"'):
        C.quantize_per_tensor(x, "int4")
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e-39):
        with pytest.raises(ValueError, match="scale must be finite"):
            C.quantize_per_tensor(x, scale=bad)
    with pytest.raises(ValueError, match="C-contiguous"):
        C.quantize_per_tensor(np.ones((4, 4), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="at least 1 dim"):
        C.quantize_per_channel(np.array(1.0, np.float32))
    with pytest.raises(TypeError, match="seed must be an int"):
        C.quantize_stochastic(x, "a")
    with pytest.raises(TypeError, match="int8, uint8 or int32"):
        C.dequantize(x, 1.0)
    with pytest.raises(ValueError, match="per-channel scale has 3 entries"):
        C.dequantize(np.zeros((2, 3), np.int8), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="scale 1 is not finite"):
        C.dequantize(np.zeros((2, 3), np.int8), np.array([1, np.nan], np.float32))
    acc = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match='layout must be "mn" or "nchw"'):
        C.dequantize_accumulator(acc, 1.0, 1.0, layout="nhwc")
    with pytest.raises(ValueError, match="scales_w has 2 entries"):
        C.dequantize_accumulator(acc, 1.0, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="bias has 4 entries"):
        C.dequantize_accumulator(acc, 1.0, 1.0, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="activation scale is not finite"):
        C.dequantize_accumulator(acc, float("inf"), 1.0)
    with pytest.raises(ValueError, match="acc must be 2D"):
        C.dequantize_accumulator(np.zeros((2, 3, 4), np.int32), 1.0, 1.0)
    with pytest.raises(TypeError, match="acc must have dtype int32"):
        C.dequantize_accumulator(acc.astype(np.int64), 1.0, 1.0)
    with pytest.raises(TypeError, match="to_float16: x must have dtype float32"):
        C.to_float16(np.ones(3, np.float64))
    with pytest.raises(TypeError, match="from_bfloat16: x must have dtype bfloat16"):
        C.from_bfloat16(np.ones(3, np.int16))


# ------------------------------------------------------------------- float16
def _f32_from_bits(bits) -> np.ndarray:
    return np.asarray(bits, np.uint32).view(np.float32)


def _fp16_inputs() -> np.ndarray:
    """Special values, every half value with its midpoints to both neighbours
    (ties) and one float32 ulp either side of the ties, random bit patterns,
    subnormal and overflow ranges."""
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    nxt = np.append(halves[1:], 65536.0)                 # 65536: where Inf starts
    mids = ((halves + nxt) / 2).astype(np.float32)       # exact in float32
    mb = mids.view(np.uint32)
    ties = np.concatenate([mids, _f32_from_bits(mb + 1), _f32_from_bits(mb - 1),
                           halves.astype(np.float32)])
    rng = np.random.default_rng(18)
    randbits = _f32_from_bits(rng.integers(0, 2 ** 32, 1_000_000, dtype=np.uint64))
    specials = np.array([0.0, 1.0, 65504.0, 65519.0, 65519.996, 65520.0, 65536.0, 1e5,
                         3.4028235e38, np.inf, 2.0 ** -14, 2.0 ** -24, 2.0 ** -25,
                         2.0 ** -25 * 1.0000001, 2.0 ** -26, 1e-45, 1e-40,
                         6.097555e-05, 6.1035156e-05, 0.1, 1 / 3], np.float32)
    sub = rng.uniform(0, 2.0 ** -13, 100_000).astype(np.float32)
    over = rng.uniform(65000, 66000, 10_000).astype(np.float32)
    x = np.concatenate([specials, ties, sub, over, randbits])
    return np.concatenate([x, -x])


def _is_nan16(h):
    return ((h & 0x7C00) == 0x7C00) & ((h & 0x3FF) != 0)


def test_to_float16_matches_numpy_bit_for_bit():
    x = _fp16_inputs()
    finite_or_inf = ~np.isnan(x)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).view(np.uint16)
    for portable in (False, True):
        h = C.to_float16(x, portable=portable)
        assert h.dtype == np.float16 and h.shape == x.shape
        hb = h.view(np.uint16)
        bad = np.flatnonzero((hb != ref) & finite_or_inf)
        assert bad.size == 0, (portable, x[bad[:5]], hb[bad[:5]], ref[bad[:5]])
        # NaN -> quiet NaN with the sign kept
        nans = ~finite_or_inf
        assert _is_nan16(hb[nans]).all() and (hb[nans] & 0x200).all()
        assert ((hb[nans] >> 15) == (x[nans].view(np.uint32) >> 31)).all()


def test_float16_portable_equals_f16c_including_nan_payloads():
    if not C.have_f16c():
        pytest.skip("build has no F16C (ET_MARCH without it): only the portable path exists")
    rng = np.random.default_rng(19)
    bits = np.concatenate([rng.integers(0, 2 ** 32, 500_000, dtype=np.uint64).astype(np.uint32),
                           # every NaN payload class: exponent all ones, random mantissas
                           (0x7F800001 + rng.integers(0, 0x7FFFFF, 50_000)).astype(np.uint32),
                           np.array([0x7F800001, 0x7FC00000, 0xFFFFFFFF, 0x7FBFFFFF], np.uint32)])
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    x = bits.view(np.float32)
    for n in (x.size, 13, 7, 1):                         # tails shorter than a vector
        np.testing.assert_array_equal(C.to_float16(x[:n]).view(np.uint16),
                                      C.to_float16(x[:n], portable=True).view(np.uint16))
    allh = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    np.testing.assert_array_equal(C.from_float16(allh).view(np.uint32),
                                  C.from_float16(allh, portable=True).view(np.uint32))


def test_from_float16_all_values_and_round_trip():
    allh = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    h = allh.view(np.float16)
    nan = _is_nan16(allh)
    ref = h.astype(np.float32)
    for portable in (False, True):
        y = C.from_float16(h, portable=portable)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
        yb = y.view(np.uint32)[nan]
        assert np.isnan(y[nan]).all() and (yb & 0x400000).all()   # quiet
        # payload and sign carried over
        np.testing.assert_array_equal((yb >> 13) & 0x1FF, allh[nan] & 0x1FF)
        np.testing.assert_array_equal(yb >> 31, allh[nan] >> 15)
        # round trip: every half value (NaNs: quieted)
        back = C.to_float16(y, portable=portable).view(np.uint16)
        np.testing.assert_array_equal(back[~nan], allh[~nan])
        np.testing.assert_array_equal(back[nan], allh[nan] | 0x200)


# ------------------------------------------------------------------ bfloat16
def _torch_bf16_bits(x: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def test_to_bfloat16_matches_torch_bit_for_bit():
    rng = np.random.default_rng(20)
    rb = rng.integers(0, 2 ** 32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    hi = rng.integers(0, 2 ** 16, 200_000, dtype=np.uint64).astype(np.uint32) << 16
    ties = np.concatenate([hi | 0x8000, hi | 0x8001, hi | 0x7FFF, hi])   # exact ties and neighbours
    sub = rng.integers(1, 0x800000, 100_000, dtype=np.uint64).astype(np.uint32)  # fp32 subnormals
    top = np.uint32(0x7F7F0000) + np.arange(0, 0x10000, 7, dtype=np.uint32)       # near FLT_MAX
    special = np.array([0, 0x7F800000, 0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x3F808000,
                        0x3F818000, 0x00008000, 0x00018000, 0x00000001, 0x7FC00000,
                        0x7F800001, 0x7FFFFFFF], np.uint32)
    bits = np.concatenate([special, rb, ties, sub, top])
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    x = bits.view(np.float32)
    ref = _torch_bf16_bits(x)
    b = C.to_bfloat16(x)
    assert b.dtype == np.uint16 and b.shape == x.shape
    nan = np.isnan(x)
    bad = np.flatnonzero((b != ref) & ~nan)
    assert bad.size == 0, (bits[bad[:5]], b[bad[:5]], ref[bad[:5]])
    nan_b = ((b & 0x7F80) == 0x7F80) & ((b & 0x7F) != 0)
    nan_t = ((ref & 0x7F80) == 0x7F80) & ((ref & 0x7F) != 0)
    assert nan_b[nan].all() and nan_t[nan].all()                # both NaN
    assert (b[nan] & 0x40).all()                                 # ours quiet, sign kept
    np.testing.assert_array_equal(b[nan] >> 15, bits[nan] >> 31)
    # overflow to Inf, a documented case
    assert C.to_bfloat16(np.array([3.4028235e38], np.float32))[0] == 0x7F80


def test_from_bfloat16_all_values_and_round_trip():
    torch = pytest.importorskip("torch")
    allb = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    y = C.from_bfloat16(allb)
    assert y.dtype == np.float32
    ref = torch.from_numpy(allb.view(np.int16)).view(torch.bfloat16).float().numpy()
    nan = np.isnan(ref)
    np.testing.assert_array_equal(y.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    assert np.isnan(y[nan]).all()
    np.testing.assert_array_equal(y.view(np.uint32), allb.astype(np.uint32) << 16)  # exact
    back = C.to_bfloat16(y)
    np.testing.assert_array_equal(back[~nan], allb[~nan])
    np.testing.assert_array_equal(back[nan], allb[nan] | 0x40)


def test_conversions_shapes_and_empty():
    x = rand((2, 3, 4), seed=21)
    for to, frm, dt in ((C.to_float16, C.from_float16, np.float16),
                        (C.to_bfloat16, C.from_bfloat16, np.uint16)):
        h = to(x)
        assert h.shape == x.shape and h.dtype == dt
        assert frm(h).shape == x.shape
        e = to(np.zeros((0, 5), np.float32))
        assert e.shape == (0, 5) and frm(e).shape == (0, 5)
    # bf16 keeps 8 significant bits: relative rounding error <= 2^-8
    y = C.from_bfloat16(C.to_bfloat16(x))
    assert (np.abs(y - x) <= np.abs(x) * 2.0 ** -8).all()


# ---- reduced ("7-bit") ranges: the qmax argument ---------------------------

@pytest.mark.parametrize("dtype,qmax", [("int8", 63), ("int8", 1), ("uint8", 127), ("uint8", 200)])
def test_per_tensor_qmax_bit_exact(dtype, qmax):
    x = rand((7, 301), seed=3, scale=5.0)
    if dtype == "uint8":
        x = np.abs(x)
    q, s = C.quantize_per_tensor(x, dtype, qmax=qmax)
    m = np.abs(x).max() if dtype == "int8" else x.max()
    rs = ref_scale(m, qmax)
    lo = -qmax if dtype == "int8" else 0
    rq = ref_apply(x, rs, lo, qmax, np.int8 if dtype == "int8" else np.uint8)
    assert np.float32(s) == rs and np.array_equal(q, rq)
    assert np.abs(q.astype(np.int32)).max() == qmax


@pytest.mark.parametrize("qmax", [63, 127])
def test_stochastic_qmax_bit_exact_and_bounded(qmax):
    x = rand((4096,), seed=4, scale=3.0)
    x[17] = np.abs(x).max() * 1.0000001   # v slightly above qmax after rounding: clamped
    q, s = C.quantize_stochastic(x, 99, 5, qmax=qmax)
    rq, rs = ref_stochastic(x, 99, 5, qmax)
    assert np.float32(s) == rs and np.array_equal(q, rq)
    assert np.abs(q.astype(np.int32)).max() <= qmax


def test_qmax_out_of_range_raises():
    x = rand((10,))
    for dtype, bad in [("int8", -1), ("int8", 128), ("uint8", 256), ("uint8", -1)]:
        with pytest.raises(ValueError, match="qmax must be in"):
            C.quantize_per_tensor(x, dtype, qmax=bad)
    with pytest.raises(ValueError, match="qmax must be in"):
        C.quantize_stochastic(x, 1, 0, qmax=128)
    with pytest.raises(ValueError, match="scale or qmax"):
        C.quantize_per_tensor(x, "int8", scale=0.1, qmax=63)


def test_reduce_range_setting_round_trips():
    import edgetrain as et
    prev = et.int8_reduce_range()
    try:
        et.set_int8_reduce_range(False)
        assert et.int8_reduce_range() is False and C.int8_reduce_range() is False
        et.set_int8_reduce_range(True)
        assert et.int8_reduce_range() is True
    finally:
        et.set_int8_reduce_range(prev)
