"""conv2d / linear forward, backward-data and backward-weight in low precision
(issue 3, sections 4 and 6 per layer) through the forward primitives:
`_C.conv2d_forward_lowp`, `conv2d_backward_lowp`, `linear_forward_lowp`,
`linear_backward_lowp` (csrc/BINDINGS.md).

Tolerances (issue 3, section 6): cosine similarity vs PyTorch fp32 of y, dx,
dw >= 0.9999 for bf16/fp16, >= 0.995 for int8. The int8 products are exact
integer sums, so (a) they equal an int64 reference (torch float64 convs of the
same integer operands: exact below 2^53) dequantized by the documented
epilogue, bit for bit, and (b) every backend gives the same floats (the
epilogue runs on the CPU); we allow 1e-6 relative for (b).
"""
from __future__ import annotations

import numpy as np
import pytest

from edgetrain import _C

torch = pytest.importorskip("torch")
F = torch.nn.functional

BACKENDS = _C.backends()
PRECS = ["fp32", "bf16", "fp16", "int8"]
COS_MIN = {"fp32": 0.999999, "bf16": 0.9999, "fp16": 0.9999, "int8": 0.995}

# The fp32 parity suite's kind of shapes: batch 1, odd / non-square, stride
# 2-3, padding 0-3, dilation 2, groups / depthwise, kernels 1/3/5/7.
CONV_CONFIGS = [
    dict(N=1, C=3, H=7, W=5, OC=4, K=(3, 3), s=(2, 2), p=(1, 1), d=(1, 1), G=1, bias=True),
    dict(N=2, C=4, H=6, W=6, OC=4, K=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1), G=1, bias=False),
    dict(N=2, C=6, H=9, W=8, OC=6, K=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1), G=6, bias=True),
    dict(N=1, C=2, H=11, W=13, OC=3, K=(7, 7), s=(2, 2), p=(3, 3), d=(1, 1), G=1, bias=True),
    dict(N=1, C=2, H=2, W=3, OC=2, K=(1, 1), s=(3, 3), p=(3, 2), d=(1, 1), G=1, bias=True),
    dict(N=3, C=4, H=10, W=7, OC=6, K=(2, 5), s=(3, 1), p=(0, 3), d=(2, 1), G=2, bias=False),
    dict(N=2, C=3, H=12, W=12, OC=5, K=(5, 5), s=(1, 1), p=(2, 2), d=(1, 1), G=1, bias=True),
    dict(N=2, C=4, H=9, W=11, OC=8, K=(3, 3), s=(1, 1), p=(2, 2), d=(2, 2), G=1, bias=True),
    dict(N=1, C=8, H=8, W=8, OC=8, K=(3, 3), s=(2, 2), p=(1, 1), d=(1, 1), G=8, bias=False),
    dict(N=4, C=8, H=6, W=6, OC=16, K=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1), G=1, bias=True),
    dict(N=2, C=5, H=13, W=9, OC=3, K=(3, 1), s=(2, 3), p=(0, 1), d=(1, 1), G=1, bias=True),
    dict(N=2, C=4, H=15, W=15, OC=4, K=(5, 5), s=(3, 3), p=(2, 2), d=(2, 2), G=2, bias=True),
    dict(N=1, C=16, H=5, W=5, OC=32, K=(1, 1), s=(2, 2), p=(0, 0), d=(1, 1), G=1, bias=False),
    dict(N=3, C=6, H=8, W=10, OC=9, K=(3, 3), s=(1, 2), p=(3, 0), d=(1, 2), G=3, bias=True),
    dict(N=2, C=3, H=16, W=16, OC=8, K=(7, 7), s=(2, 2), p=(3, 3), d=(1, 1), G=1, bias=True),
]
LINEAR_SHAPES = [(1, 7, 3), (8, 64, 10), (33, 50, 17), (128, 256, 64)]


def _qmax(nonneg):
    """The qmax the int8 ops use now for an activation (u8 when nonneg) or a
    gradient (quantize.h: 7 bits under reduce_range, the default)."""
    if _C.int8_reduce_range():
        return 127 if nonneg else 63
    return 255 if nonneg else 127


@pytest.fixture(params=[True, False], ids=["reduce_range", "full_range"])
def reduce_range(request):
    prev = _C.int8_reduce_range()
    _C.set_int8_reduce_range(request.param)
    yield request.param
    _C.set_int8_reduce_range(prev)


def _cfg_id(c):
    return f"N{c['N']}C{c['C']}{c['H']}x{c['W']}OC{c['OC']}K{c['K'][0]}{c['K'][1]}s{c['s'][0]}{c['s'][1]}" \
           f"p{c['p'][0]}{c['p'][1]}d{c['d'][0]}{c['d'][1]}G{c['G']}"


def _conv_data(c, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
    w = (rng.standard_normal((c["OC"], c["C"] // c["G"], *c["K"])) * 0.3).astype(np.float32)
    b = rng.standard_normal(c["OC"]).astype(np.float32) if c["bias"] else None
    return x, w, b


def _torch_conv(x, w, b, c, dy=None):
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if b is not None else None
    y = F.conv2d(xt, wt, bt, c["s"], c["p"], c["d"], c["G"])
    if dy is None:
        return y.detach().numpy()
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), (bt.grad.numpy() if b is not None else None)


def _cos(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def _conv_lowp(x, w, b, c, dy, prec, backend, seed=7, offset=0):
    y = _C.conv2d_forward_lowp(x, w, b, c["s"], c["p"], c["d"], c["G"], prec, backend)
    dx, dw, db = _C.conv2d_backward_lowp(dy, x, w, c["s"], c["p"], c["d"], c["G"], True, True, True,
                                         prec, prec, seed, offset, backend)
    return y, dx, dw, db


@pytest.mark.parametrize("prec", PRECS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_lowp_vs_torch(backend, prec):
    """Cosine similarity of y, dx, dw vs torch fp32 >= COS_MIN[prec] on every config."""
    for i, c in enumerate(CONV_CONFIGS):
        x, w, b = _conv_data(c, 100 + i)
        y_ref = _torch_conv(x, w, b, c)
        dy = np.random.default_rng(200 + i).standard_normal(y_ref.shape).astype(np.float32)
        _, dx_ref, dw_ref, db_ref = _torch_conv(x, w, b, c, dy)
        y, dx, dw, db = _conv_lowp(x, w, b, c, dy, prec, backend)
        assert y.shape == y_ref.shape and dx.shape == x.shape and dw.shape == w.shape
        for name, got, ref in (("y", y, y_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref)):
            cs = _cos(got, ref)
            assert cs >= COS_MIN[prec], f"{prec}/{backend} {_cfg_id(c)} {name}: cos {cs:.6f}"
        if b is not None:   # db is an f32 sum in every precision
            np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("prec", PRECS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_lowp_vs_torch(backend, prec):
    for i, (M, K, N) in enumerate(LINEAR_SHAPES):
        rng = np.random.default_rng(300 + i)
        x = rng.standard_normal((M, K)).astype(np.float32)
        w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
        b = rng.standard_normal(N).astype(np.float32)
        dy = rng.standard_normal((M, N)).astype(np.float32)
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        yt = F.linear(xt, wt, bt)
        yt.backward(torch.tensor(dy))
        y = _C.linear_forward_lowp(x, w, b, prec, backend)
        dx, dw, db = _C.linear_backward_lowp(dy, x, w, True, True, True, prec, prec, 3, i, backend)
        for name, got, ref in (("y", y, yt), ("dx", dx, xt.grad), ("dw", dw, wt.grad)):
            cs = _cos(got, ref.detach().numpy())
            assert cs >= COS_MIN[prec], f"{prec}/{backend} linear {(M, K, N)} {name}: cos {cs:.6f}"
        np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-5, atol=1e-4)


# ---- int8 exactness: the same quantized operands through an int64 reference ----

def _i64(t):
    out = t.detach().numpy()
    r = np.rint(out)
    assert np.array_equal(r, out)   # float64 sums of integers < 2^53 are exact
    return r.astype(np.int64)


@pytest.mark.parametrize("x_nonneg", [False, True])
def test_conv2d_int8_exact_and_backends_agree(x_nonneg, reduce_range):
    """y / dx / dw of int8 = the int64 reference of the quantized operands,
    dequantized by the documented epilogue (bit for bit on ref); every backend
    agrees with ref within 1e-6 relative."""
    for i, c in enumerate(CONV_CONFIGS):
        x, w, b = _conv_data(c, 500 + i)
        if x_nonneg:
            x = np.maximum(x, 0)
        s, p, d, G = c["s"], c["p"], c["d"], c["G"]
        seed, offset = 11, 40 + i
        # forward: x per tensor (u8 / s8), w per output channel
        xq, sx = _C.quantize_per_tensor(x, "uint8" if x_nonneg else "int8", qmax=_qmax(x_nonneg))
        wq, sw = _C.quantize_per_channel(w)
        xq64, wq64 = torch.tensor(xq.astype(np.float64)), torch.tensor(wq.astype(np.float64))
        acc = _i64(F.conv2d(xq64, wq64, None, s, p, d, G))
        assert np.abs(acc).max() < 2**31
        y_ref = _C.dequantize_accumulator(acc.astype(np.int32), sx, sw, b, layout="nchw")
        dy = np.random.default_rng(600 + i).standard_normal(y_ref.shape).astype(np.float32)
        # backward: dy stochastic s8; w flipped/transposed, per channel of x's C
        dyq, sdy = _C.quantize_stochastic(dy, seed, offset, qmax=_qmax(False))
        OC, Cg = w.shape[:2]
        wt = w.reshape(G, OC // G, Cg, *c["K"]).transpose(0, 2, 1, 3, 4).reshape(c["C"], OC // G, *c["K"])
        wtq, swt = _C.quantize_per_channel(np.ascontiguousarray(wt))
        wq_back = wtq.reshape(G, Cg, OC // G, *c["K"]).transpose(0, 2, 1, 3, 4).reshape(w.shape)
        dyq64 = torch.tensor(dyq.astype(np.float64))
        accx = _i64(torch.nn.grad.conv2d_input(x.shape, torch.tensor(wq_back.astype(np.float64)),
                                               dyq64, s, p, d, G))
        dx_ref = _C.dequantize_accumulator(accx.astype(np.int32), sdy, swt, None, layout="nchw")
        accw = _i64(torch.nn.grad.conv2d_weight(xq64, w.shape, dyq64, s, p, d, G))
        dw_ref = accw.astype(np.float32) * np.float32(np.float32(sx) * np.float32(sdy))
        for backend in BACKENDS:
            y = _C.conv2d_forward_lowp(x, w, b, s, p, d, G, "int8", backend, x_nonneg=x_nonneg)
            dx, dw, _ = _C.conv2d_backward_lowp(dy, x, w, s, p, d, G, True, True, False, "int8",
                                                "int8", seed, offset, backend, x_nonneg=x_nonneg)
            for name, got, ref in (("y", y, y_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref)):
                tol = 1e-6 * max(np.abs(ref).max(), 1e-30)
                np.testing.assert_allclose(got, ref, rtol=1e-6, atol=tol,
                                           err_msg=f"{backend} {_cfg_id(c)} {name}")
                if backend == "ref":
                    assert np.array_equal(got, ref), f"ref {_cfg_id(c)} {name} not bit-exact"


def test_linear_int8_exact_and_backends_agree(reduce_range):
    for i, (M, K, N) in enumerate(LINEAR_SHAPES):
        rng = np.random.default_rng(700 + i)
        x = np.maximum(rng.standard_normal((M, K)), 0).astype(np.float32)
        w = rng.standard_normal((N, K)).astype(np.float32)
        b = rng.standard_normal(N).astype(np.float32)
        dy = rng.standard_normal((M, N)).astype(np.float32)
        xq, sx = _C.quantize_per_tensor(x, "uint8", qmax=_qmax(True))
        wq, sw = _C.quantize_per_channel(w)
        y_ref = _C.dequantize_accumulator((xq.astype(np.int64) @ wq.astype(np.int64).T).astype(np.int32),
                                          sx, sw, b, layout="mn")
        dyq, sdy = _C.quantize_stochastic(dy, 5, i, qmax=_qmax(False))
        wtq, swt = _C.quantize_per_channel(np.ascontiguousarray(w.T))
        dx_ref = _C.dequantize_accumulator((dyq.astype(np.int64) @ wtq.astype(np.int64).T).astype(np.int32),
                                           sdy, swt, None, layout="mn")
        dw_ref = (dyq.astype(np.int64).T @ xq.astype(np.int64)).astype(np.float32) * \
            np.float32(np.float32(sx) * np.float32(sdy))
        for backend in BACKENDS:
            y = _C.linear_forward_lowp(x, w, b, "int8", backend, x_nonneg=True)
            dx, dw, _ = _C.linear_backward_lowp(dy, x, w, True, True, False, "int8", "int8", 5, i,
                                                backend, x_nonneg=True)
            for name, got, ref in (("y", y, y_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref)):
                np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max(),
                                           err_msg=f"{backend} linear {(M, K, N)} {name}")


# ---- stochastic rounding: reproducible, offset-dependent ----------------------

def test_stochastic_rounding_reproducible_and_offset_dependent():
    c = CONV_CONFIGS[7]
    x, w, b = _conv_data(c, 1)
    y = _torch_conv(x, w, b, c)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    args = (dy, x, w, c["s"], c["p"], c["d"], c["G"], True, True, False, "int8", "int8")
    a = _C.conv2d_backward_lowp(*args, 123, 9, "ref")
    b2 = _C.conv2d_backward_lowp(*args, 123, 9, "ref")
    other = _C.conv2d_backward_lowp(*args, 123, 10, "ref")
    other_seed = _C.conv2d_backward_lowp(*args, 124, 9, "ref")
    for k in (0, 1):
        assert np.array_equal(a[k], b2[k])
        assert not np.array_equal(a[k], other[k])
        assert not np.array_equal(a[k], other_seed[k])
    # huge / negative seeds are taken mod 2^64
    n1 = _C.conv2d_backward_lowp(*args, -1, 2**64 + 9, "ref")
    n2 = _C.conv2d_backward_lowp(*args, 2**64 - 1, 9, "ref")
    assert np.array_equal(n1[0], n2[0])
    xl = np.ascontiguousarray(x.reshape(x.shape[0], -1)[:, :16])
    wl = np.ascontiguousarray(w.reshape(w.shape[0], -1)[:, :16])
    dyl = np.random.default_rng(3).standard_normal((xl.shape[0], wl.shape[0])).astype(np.float32)
    la = _C.linear_backward_lowp(dyl, xl, wl, True, True, False, "int8", "int8", 1, 1, "ref")
    lb = _C.linear_backward_lowp(dyl, xl, wl, True, True, False, "int8", "int8", 1, 1, "ref")
    lc = _C.linear_backward_lowp(dyl, xl, wl, True, True, False, "int8", "int8", 1, 2, "ref")
    assert np.array_equal(la[0], lb[0]) and not np.array_equal(la[0], lc[0])


# ---- saved activations at forward precision ----------------------------------

@pytest.mark.parametrize("x_nonneg", [False, True])
def test_conv2d_backward_from_saved_xq(x_nonneg):
    c = CONV_CONFIGS[5]
    x, w, b = _conv_data(c, 4)
    if x_nonneg:
        x = np.maximum(x, 0)
    y, xq, sx = _C.conv2d_forward_lowp(x, w, b, c["s"], c["p"], c["d"], c["G"], "int8", "ref",
                                       x_nonneg=x_nonneg, return_xq=True)
    assert xq.dtype == (np.uint8 if x_nonneg else np.int8) and xq.shape == x.shape
    q2, s2 = _C.quantize_per_tensor(x, "uint8" if x_nonneg else "int8", qmax=_qmax(x_nonneg))
    assert np.array_equal(xq, q2) and sx == s2
    assert np.array_equal(y, _C.conv2d_forward_lowp(x, w, b, c["s"], c["p"], c["d"], c["G"], "int8",
                                                    "ref", x_nonneg=x_nonneg))
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    geo = (c["s"], c["p"], c["d"], c["G"])
    full = _C.conv2d_backward_lowp(dy, x, w, *geo, True, True, True, "int8", "int8", 1, 2, "ref",
                                   x_nonneg=x_nonneg)
    saved = _C.conv2d_backward_lowp(dy, None, w, *geo, True, True, True, "int8", "int8", 1, 2,
                                    "ref", x_q=xq, x_scale=sx)
    for a, bb in zip(full, saved):
        assert np.array_equal(a, bb)
    # a bf16 dw pass from the saved int8 x uses its dequantized values
    dwb = _C.conv2d_backward_lowp(dy, None, w, *geo, False, True, False, "int8", "bf16", 1, 2,
                                  "ref", x_q=xq, x_scale=sx)[1]
    xd = _C.dequantize(xq, sx)
    ref = _C.conv2d_backward_lowp(dy, xd, w, *geo, False, True, False, "int8", "bf16", 1, 2, "ref")[1]
    assert np.array_equal(dwb, ref)
    # fp32 forward returns (y, None, None) when asked for x_q
    y32, none_q, none_s = _C.conv2d_forward_lowp(x, w, b, *geo, "fp32", "ref", return_xq=True)
    assert none_q is None and none_s is None


def test_linear_backward_from_saved_xq():
    rng = np.random.default_rng(8)
    x = np.maximum(rng.standard_normal((16, 24)), 0).astype(np.float32)
    w = rng.standard_normal((10, 24)).astype(np.float32)
    y, xq, sx = _C.linear_forward_lowp(x, w, None, "int8", "ref", x_nonneg=True, return_xq=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    full = _C.linear_backward_lowp(dy, x, w, True, True, True, "int8", "int8", 3, 4, "ref",
                                   x_nonneg=True)
    saved = _C.linear_backward_lowp(dy, None, w, True, True, True, "int8", "int8", 3, 4, "ref",
                                    x_q=xq, x_scale=sx)
    for a, b in zip(full, saved):
        assert np.array_equal(a, b)



# bf16 / fp16 forwards keep x's 16-bit values (2 bytes per element): what their
# product consumed. A dw pass of the same precision uses them as is, which is
# bit-identical to converting the fp32 x again (rounding is idempotent); a dw
# pass at another precision uses them widened to fp32 (as PyTorch's autocast,
# which saves the cast input).
_WIDEN = {"bf16": lambda q: _C.from_bfloat16(q), "fp16": lambda q: q.astype(np.float32)}
_LOWP_DTYPE = {"bf16": np.uint16, "fp16": np.float16}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fwd", ["bf16", "fp16"])
def test_conv2d_backward_from_saved_16bit_x(fwd, backend):
    for ci in (0, 5, 9):   # stride 2 + padding; groups + dilation + stride; plain 3x3
        c = CONV_CONFIGS[ci]
        x, w, b = _conv_data(c, 6 + ci)
        x[0, 0, 0, 0] = 1 + 2.0 ** -12   # rounds differently in bf16 and fp16
        geo = (c["s"], c["p"], c["d"], c["G"])
        y, xq, sx = _C.conv2d_forward_lowp(x, w, b, *geo, fwd, backend, return_xq=True)
        assert xq.dtype == _LOWP_DTYPE[fwd] and xq.shape == x.shape and sx is None
        assert xq.nbytes == x.nbytes // 2
        assert np.array_equal(y, _C.conv2d_forward_lowp(x, w, b, *geo, fwd, backend))
        xw = _WIDEN[fwd](xq)   # the values the forward consumed
        assert np.array_equal(xw, _WIDEN[fwd](_C.to_bfloat16(x) if fwd == "bf16"
                                               else x.astype(np.float16)))
        dy = np.random.default_rng(ci).standard_normal(y.shape).astype(np.float32)
        for pdw in PRECS:
            full = _C.conv2d_backward_lowp(dy, x, w, *geo, True, True, True, fwd, pdw, 1, 2,
                                           backend, x_nonneg=False)
            saved = _C.conv2d_backward_lowp(dy, None, w, *geo, True, True, True, fwd, pdw, 1, 2,
                                            backend, x_q=xq)
            widened = _C.conv2d_backward_lowp(dy, xw, w, *geo, True, True, True, fwd, pdw, 1, 2,
                                              backend)
            for k in (0, 2):   # dx and db do not read x
                assert np.array_equal(saved[k], full[k]), (ci, pdw, k)
            assert np.array_equal(saved[1], widened[1]), (ci, pdw)
            if pdw == fwd:
                assert np.array_equal(saved[1], full[1]), (ci, pdw)
        if fwd == "bf16":   # the changed element: fp32 / fp16 dw see its bf16 value
            a = _C.conv2d_backward_lowp(dy, None, w, *geo, False, True, False, fwd, "fp32", 1, 2,
                                        backend, x_q=xq)[1]
            f = _C.conv2d_backward_lowp(dy, x, w, *geo, False, True, False, fwd, "fp32", 1, 2,
                                        backend)[1]
            assert not np.array_equal(a, f), ci


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fwd", ["bf16", "fp16"])
def test_linear_backward_from_saved_16bit_x(fwd, backend):
    rng = np.random.default_rng(9)
    x = np.maximum(rng.standard_normal((33, 50)), 0).astype(np.float32)
    w = rng.standard_normal((17, 50)).astype(np.float32)
    b = rng.standard_normal(17).astype(np.float32)
    y, xq, sx = _C.linear_forward_lowp(x, w, b, fwd, backend, return_xq=True)
    assert xq.dtype == _LOWP_DTYPE[fwd] and xq.shape == x.shape and sx is None
    assert np.array_equal(y, _C.linear_forward_lowp(x, w, b, fwd, backend))
    xw = _WIDEN[fwd](xq)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for pdw in PRECS:
        # x >= 0: an int8 dw from the widened 16-bit x quantizes it as u8
        full = _C.linear_backward_lowp(dy, x, w, True, True, True, fwd, pdw, 3, 4, backend,
                                       x_nonneg=True)
        saved = _C.linear_backward_lowp(dy, None, w, True, True, True, fwd, pdw, 3, 4, backend,
                                        x_nonneg=True, x_q=xq)
        widened = _C.linear_backward_lowp(dy, xw, w, True, True, True, fwd, pdw, 3, 4, backend,
                                          x_nonneg=True)
        assert np.array_equal(saved[0], full[0]) and np.array_equal(saved[2], full[2]), pdw
        assert np.array_equal(saved[1], widened[1]), pdw
        if pdw == fwd:
            assert np.array_equal(saved[1], full[1]), pdw
    # fp32 forward: nothing to keep
    assert _C.linear_forward_lowp(x, w, b, "fp32", backend, return_xq=True)[1:] == (None, None)


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: _C.conv2d_backward_lowp(np.ones((2, 6, 6, 6), np.float32), None,
                                     np.ones((6, 2, 3, 3), np.float32), 1, 0, 1, 2, True, True,
                                     True, "bf16", "bf16", 0, 0, "ref",
                                     x_q=np.ones((2, 4, 8, 8), np.uint16), x_scale=0.5),
     ValueError, r"conv2d_backward_lowp: x_scale is for an int8 x_q; a bf16 x_q has none"),
    (lambda: _C.linear_backward_lowp(np.ones((3, 2), np.float32), None, np.ones((2, 4), np.float32),
                                     True, True, True, "fp16", "fp16", 0, 0, "ref",
                                     x_q=np.ones((3, 5), np.float16)),
     ValueError, r"linear_backward_lowp: .*\(3, 5\)"),
    (lambda: _C.linear_backward_lowp(np.ones((3, 2), np.float32), None, np.ones((2, 4), np.float32),
                                     True, True, True, "fp16", "fp16", 0, 0, "ref",
                                     x_q=np.ones((3, 4), np.float64)),
     TypeError, r"linear_backward_lowp: x_q must be uint8 or int8 \(with x_scale\), or bf16 bits"),
])
def test_saved_16bit_x_errors(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()

# ---- mixed precisions per pass ---------------------------------------------------

def test_mixed_precisions_per_pass():
    """int8-mixed: int8 forward and backward-data, bf16 backward-weight; each
    pass equals the same pass run alone at its precision."""
    c = CONV_CONFIGS[9]
    x, w, b = _conv_data(c, 9)
    geo = (c["s"], c["p"], c["d"], c["G"])
    y = _C.conv2d_forward_lowp(x, w, b, *geo, "int8", "ref")
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx, dw, _ = _C.conv2d_backward_lowp(dy, x, w, *geo, True, True, False, "int8", "bf16", 6, 6, "ref")
    dx8 = _C.conv2d_backward_lowp(dy, x, w, *geo, True, False, False, "int8", "int8", 6, 6, "ref")[0]
    dwb = _C.conv2d_backward_lowp(dy, x, w, *geo, False, True, False, "fp32", "bf16", 6, 6, "ref")[1]
    assert np.array_equal(dx, dx8) and np.array_equal(dw, dwb)
    _, dx_ref, dw_ref, _ = _torch_conv(x, w, b, c, dy)
    assert _cos(dx, dx_ref) >= 0.995 and _cos(dw, dw_ref) >= 0.9999


# ---- every product through the queue ----------------------------------------------

def test_every_product_counted_in_default_queue():
    c = CONV_CONFIGS[3]
    x, w, b = _conv_data(c, 3)
    geo = (c["s"], c["p"], c["d"], c["G"])
    for prec in PRECS:
        s0 = _C.default_queue_stats()
        y = _C.conv2d_forward_lowp(x, w, b, *geo, prec, "ref")
        s1 = _C.default_queue_stats()
        assert s1["submitted"] - s0["submitted"] == 1 and s1["completed"] - s0["completed"] == 1
        dy = np.ones_like(y)
        _C.conv2d_backward_lowp(dy, x, w, *geo, True, True, True, prec, prec, 0, 0, "ref")
        s2 = _C.default_queue_stats()
        assert s2["submitted"] - s1["submitted"] == 2 and s2["completed"] - s1["completed"] == 2
        _C.conv2d_backward_lowp(dy, x, w, *geo, False, False, True, prec, prec, 0, 0, "ref")
        assert _C.default_queue_stats()["submitted"] == s2["submitted"]   # db: CPU only
        xl = np.ones((4, 6), np.float32)
        wl = np.ones((3, 6), np.float32)
        yl = _C.linear_forward_lowp(xl, wl, None, prec, "ref")
        _C.linear_backward_lowp(np.ones_like(yl), xl, wl, True, True, True, prec, prec, 0, 0, "ref")
        s3 = _C.default_queue_stats()
        assert s3["submitted"] - s2["submitted"] == 3 and s3["completed"] - s2["completed"] == 3


# ---- bad inputs ------------------------------------------------------------------------

X = np.ones((2, 4, 8, 8), np.float32)
Wc = np.ones((6, 2, 3, 3), np.float32)


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda: _C.conv2d_forward_lowp(X, Wc, None, 1, 0, 1, 2, "int4", "ref"), ValueError,
     r"conv2d_forward_lowp: precision must be one of 'fp32', 'bf16', 'fp16', 'int8', got 'int4'"),
    (lambda: _C.conv2d_forward_lowp(X, Wc, None, 1, 0, 1, 1, "int8", "ref"), ValueError,
     r"conv2d_forward_lowp: input channels 4 != .*\(2, 4, 8, 8\).*\(6, 2, 3, 3\)"),
    (lambda: _C.conv2d_forward_lowp(X, Wc, None, 1, 0, 1, 2, "int8", "nope"), ValueError, r"nope"),
    (lambda: _C.conv2d_forward_lowp(X.astype(np.float64), Wc, None, 1, 0, 1, 2, "bf16", "ref"),
     TypeError, r"conv2d_forward_lowp: x must be float32.*\(2, 4, 8, 8\)"),
    (lambda: _C.conv2d_forward_lowp(X, Wc, np.ones(5, np.float32), 1, 0, 1, 2, "int8", "ref"),
     ValueError, r"conv2d_forward_lowp: bias.*\(5,\)"),
    (lambda: _C.conv2d_forward_lowp(X * np.float32(np.nan), Wc, None, 1, 0, 1, 2, "int8", "ref"),
     ValueError, r"NaN/Inf at index 0"),
    (lambda: _C.conv2d_backward_lowp(np.ones((2, 6, 5, 5), np.float32), X, Wc, 1, 0, 1, 2, True,
                                     True, True, "int8", "int8", 0, 0, "ref"),
     ValueError, r"conv2d_backward_lowp: grad_output \(2, 6, 5, 5\) must have the output shape "
                 r"\(2, 6, 6, 6\)"),
    (lambda: _C.conv2d_backward_lowp(np.ones((2, 6, 6, 6), np.float32), X, Wc, 1, 0, 1, 2, True,
                                     True, True, "int8", "fp8", 0, 0, "ref"),
     ValueError, r"precision_dw must be one of.*got 'fp8'"),
    (lambda: _C.conv2d_backward_lowp(np.ones((2, 6, 6, 6), np.float32), None, Wc, 1, 0, 1, 2, True,
                                     True, True, "int8", "int8", 0, 0, "ref"),
     ValueError, r"conv2d_backward_lowp: x is None and no x_q"),
    (lambda: _C.conv2d_backward_lowp(np.ones((2, 6, 6, 6), np.float32), None, Wc, 1, 0, 1, 2, True,
                                     True, True, "int8", "int8", 0, 0, "ref",
                                     x_q=np.ones((2, 4, 8, 8), np.int8)),
     ValueError, r"x_q given without x_scale"),
    (lambda: _C.conv2d_backward_lowp(np.ones((2, 6, 6, 6), np.float32), X, Wc, 1, 0, 1, 2, True,
                                     True, True, "int8", "int8", 0, 0, "ref",
                                     x_q=np.ones((2, 4, 8, 7), np.int8), x_scale=0.1),
     ValueError, r"conv2d_backward_lowp: x_q \(2, 4, 8, 7\) must have the input's shape \(2, 4, 8, 8\)"),
    (lambda: _C.conv2d_backward_lowp(np.ones((2, 6, 6, 6), np.float32), None, Wc, 1, 0, 1, 2, True,
                                     True, True, "int8", "int8", 0, 0, "ref",
                                     x_q=np.ones((2, 4, 8, 8), np.int16), x_scale=0.1),
     TypeError, r"x_q must be uint8 or int8"),
    (lambda: _C.conv2d_backward_lowp(np.ones((2, 6, 6, 6), np.float32), None, Wc, 1, 0, 1, 2, True,
                                     True, True, "int8", "int8", 0, 0, "ref",
                                     x_q=np.ones((2, 4, 8, 8), np.int8), x_scale=float("nan")),
     ValueError, r"x_scale must be finite"),
    (lambda: _C.conv2d_backward_lowp(np.ones((2, 6, 6, 6), np.float32), X, Wc, 1, 0, 1, 2, True,
                                     True, True, "int8", "int8", 1.5, 0, "ref"),
     TypeError, r"seed must be an int"),
    (lambda: _C.linear_forward_lowp(np.ones((3, 4), np.float32), np.ones((2, 5), np.float32), None,
                                    "int8", "ref"),
     ValueError, r"linear_forward_lowp: in_features differ: input \(3, 4\) vs weight \(2, 5\)"),
    (lambda: _C.linear_backward_lowp(np.ones((3, 3), np.float32), np.ones((3, 4), np.float32),
                                     np.ones((2, 4), np.float32), True, True, True, "int8", "int8",
                                     0, 0, "ref"),
     ValueError, r"linear_backward_lowp: grad_output \(3, 3\).*\(3, 2\)"),
    (lambda: _C.linear_forward_lowp(np.ones((3, 4), np.float32), np.ones((2, 4), np.float32), None,
                                    "half", "ref"),
     ValueError, r"linear_forward_lowp: precision must be one of"),
])
def test_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
    assert issubclass(exc, Exception)


# ---- s32 range: large reductions are split and summed exactly -----------------------

def test_int8_weight_grad_reduction_beyond_int32_is_exact():
    """All-maximal operands: x -> u8 255 and dy -> s8 127 everywhere, so the
    centre tap of dw sums N*OH*OW = 17*64*64 = 69632 products of 255*127
    (2.26e9 > 2^31). The batch is split into chunks whose s32 results are added
    in int64: dw equals the exact count times the scales (an unsplit s32
    accumulation would saturate or wrap). Same for linear dw over M rows."""
    x = np.ones((17, 1, 64, 64), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    dy = np.ones((17, 1, 64, 64), np.float32)
    counts = torch.nn.grad.conv2d_weight(torch.ones(17, 1, 64, 64, dtype=torch.float64), w.shape,
                                         torch.ones(17, 1, 64, 64, dtype=torch.float64), 1, 1)
    counts = counts.numpy().astype(np.int64)
    assert counts.max() == 69632
    scale = np.float32(np.float32(1 / 255) * np.float32(1 / 127))
    _, sx = _C.quantize_per_tensor(x, "uint8")
    _, sdy = _C.quantize_stochastic(dy, 0, 0)
    scale = np.float32(np.float32(sx) * np.float32(sdy))
    expect = (counts * (255 * 127)).astype(np.float32) * scale
    for backend in BACKENDS:
        s0 = _C.default_queue_stats()["submitted"]
        dw = _C.conv2d_backward_lowp(dy, x, w, 1, 1, 1, 1, False, True, False, "int8", "int8",
                                     0, 0, backend, x_nonneg=True)[1]
        assert _C.default_queue_stats()["submitted"] - s0 == 2   # two batch chunks
        np.testing.assert_allclose(dw, expect, rtol=1e-6, err_msg=backend)
        np.testing.assert_allclose(dw, counts.astype(np.float32), rtol=1e-5, err_msg=backend)
    M = 70000
    xl = np.ones((M, 2), np.float32)
    dyl = np.ones((M, 3), np.float32)
    wl = np.ones((3, 2), np.float32)
    for backend in BACKENDS:
        dwl = _C.linear_backward_lowp(dyl, xl, wl, False, True, False, "int8", "int8", 0, 0,
                                      backend, x_nonneg=True)[1]
        np.testing.assert_allclose(dwl, np.full((3, 2), M, np.float32), rtol=1e-5, err_msg=backend)


@pytest.mark.parametrize("dw_mode", ["auto", "conv", "gemm"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_precision_matches_fp32_ops(backend, dw_mode, monkeypatch):
    """precision 'fp32' runs the same primitives on the same operands as the
    fp32 ops: results equal conv2d_forward / conv2d_backward / linear_* bit for bit.
    The weight gradient too, in each formulation (ET_CONV_DW): both paths make
    the same choice with the same chunks (csrc/ops/conv2d_dw.c)."""
    monkeypatch.setenv("ET_CONV_DW", dw_mode)
    for i, c in enumerate(CONV_CONFIGS[:8]):
        x, w, b = _conv_data(c, 900 + i)
        geo = (c["s"], c["p"], c["d"], c["G"])
        y = _C.conv2d_forward_lowp(x, w, b, *geo, "fp32", backend)
        assert np.array_equal(y, _C.conv2d_forward(x, w, b, *geo, backend))
        dy = np.random.default_rng(i).standard_normal(y.shape).astype(np.float32)
        got = _C.conv2d_backward_lowp(dy, x, w, *geo, True, True, True, "fp32", "fp32", 0, 0, backend)
        ref = _C.conv2d_backward(dy, x, w, *geo, True, True, True, backend)
        for g, r in zip(got, ref):
            assert np.array_equal(g, r), _cfg_id(c)
    rng = np.random.default_rng(1)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((9, 20), (7, 20), (7,)))
    dy = rng.standard_normal((9, 7)).astype(np.float32)
    assert np.array_equal(_C.linear_forward_lowp(x, w, b, "fp32", backend),
                          _C.linear_forward(x, w, b, backend))
    for g, r in zip(_C.linear_backward_lowp(dy, x, w, True, True, True, "fp32", "fp32", 0, 0, backend),
                    _C.linear_backward(dy, x, w, True, True, True, backend)):
        assert np.array_equal(g, r)
