"""conv2d / linear forward and backward, every product a FORWARD primitive
through the offload queue, on every backend, vs torch autograd (float64).

Tolerance: max |err| / max |ref| <= 1e-4 per output (dx, dw, db, y).
Cases are seeded random draws over batch 1.., odd and non-square sizes,
stride 1-3, padding 0-3, dilation 1-2, groups 1 / 2 / depthwise, kernels
1/2/3/5/7, with and without bias.
"""
import numpy as np
import pytest

from edgetrain import _C

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = 1e-4
BACKENDS = _C.backends()
HAVE_QUEUE_STATS = hasattr(_C, "default_queue_stats")


def rel_err(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def make_cases(n=30, seed=2024):
    rng = np.random.default_rng(seed)
    cases = [  # fixed corners first
        dict(N=1, C=3, H=7, W=5, OC=4, K=(3, 3), s=(2, 2), p=(1, 1), d=(1, 1), G=1, bias=True),
        dict(N=2, C=4, H=6, W=6, OC=4, K=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1), G=1, bias=False),
        dict(N=2, C=6, H=9, W=8, OC=6, K=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1), G=6, bias=True),
        dict(N=1, C=2, H=11, W=13, OC=3, K=(7, 7), s=(2, 2), p=(3, 3), d=(1, 1), G=1, bias=True),
        dict(N=1, C=2, H=2, W=3, OC=2, K=(1, 1), s=(3, 3), p=(3, 2), d=(1, 1), G=1, bias=True),
        dict(N=3, C=4, H=10, W=7, OC=6, K=(2, 5), s=(3, 1), p=(0, 3), d=(2, 1), G=2, bias=False),
    ]
    while len(cases) < n:
        G = int(rng.choice([1, 1, 2, 0]))   # 0: depthwise
        C = int(rng.integers(1, 5))
        if G == 0:
            G, OC = C, C * int(rng.integers(1, 3))
        else:
            C *= G
            OC = G * int(rng.integers(1, 4))
        K = (int(rng.choice([1, 2, 3, 5, 7])), int(rng.choice([1, 2, 3, 5])))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        p = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        H, W = int(rng.integers(1, 14)), int(rng.integers(1, 14))
        if H + 2 * p[0] < d[0] * (K[0] - 1) + 1 or W + 2 * p[1] < d[1] * (K[1] - 1) + 1:
            continue
        cases.append(dict(N=int(rng.integers(1, 4)), C=C, H=H, W=W, OC=OC, K=K, s=s, p=p, d=d,
                          G=G, bias=bool(rng.integers(0, 2))))
    return cases


CASES = make_cases()


def torch_conv(x, w, b, c, dy):
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True) if b is not None else None
    y = F.conv2d(tx, tw, tb, c["s"], c["p"], c["d"], c["G"])
    if dy is None:
        return y.detach().numpy()
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return (y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(),
            tb.grad.numpy() if tb is not None else None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_forward_backward_vs_torch(backend):
    rng = np.random.default_rng(99)
    for i, c in enumerate(CASES):
        x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
        w = rng.standard_normal((c["OC"], c["C"] // c["G"]) + c["K"]).astype(np.float32)
        b = rng.standard_normal(c["OC"]).astype(np.float32) if c["bias"] else None
        y = _C.conv2d_forward(x, w, b, c["s"], c["p"], c["d"], c["G"], backend)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        ry, rdx, rdw, rdb = torch_conv(x, w, b, c, dy)
        assert rel_err(y, ry) <= TOL, ("y", backend, i, c)
        dx, dw, db = _C.conv2d_backward(dy, x, w, c["s"], c["p"], c["d"], c["G"],
                                        True, True, c["bias"], backend)
        assert rel_err(dx, rdx) <= TOL, ("dx", backend, i, c)
        assert rel_err(dw, rdw) <= TOL, ("dw", backend, i, c)
        if c["bias"]:
            assert rel_err(db, rdb) <= TOL, ("db", backend, i, c)
        else:
            assert db is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_backward_partial(backend):
    rng = np.random.default_rng(3)
    c = CASES[5]
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
    w = rng.standard_normal((c["OC"], c["C"] // c["G"]) + c["K"]).astype(np.float32)
    y = _C.conv2d_forward(x, w, None, c["s"], c["p"], c["d"], c["G"], backend)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    _, rdx, rdw, _ = torch_conv(x, w, None, c, dy)
    dx, dw, db = _C.conv2d_backward(dy, x, w, c["s"], c["p"], c["d"], c["G"], True, False, False, backend)
    assert dw is None and db is None and rel_err(dx, rdx) <= TOL
    dx, dw, db = _C.conv2d_backward(dy, x, w, c["s"], c["p"], c["d"], c["G"], False, True, True, backend)
    assert dx is None and rel_err(dw, rdw) <= TOL
    np.testing.assert_allclose(db, dy.astype(np.float64).sum((0, 2, 3)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_backward_data_and_weight_separately(backend):
    rng = np.random.default_rng(8)
    for c in CASES[:8]:
        x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
        w = rng.standard_normal((c["OC"], c["C"] // c["G"]) + c["K"]).astype(np.float32)
        y = _C.conv2d_forward(x, w, None, c["s"], c["p"], c["d"], c["G"], backend)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        _, rdx, rdw, _ = torch_conv(x, w, None, c, dy)
        dx = _C.conv2d_backward_data(dy, w, x.shape, c["s"], c["p"], c["d"], c["G"], backend)
        dw = _C.conv2d_backward_weight(dy, x, w.shape, c["s"], c["p"], c["d"], c["G"], backend)
        assert rel_err(dx, rdx) <= TOL and rel_err(dw, rdw) <= TOL, (backend, c)
    with pytest.raises(ValueError, match=r"conv2d_backward_data.*grad_output"):
        _C.conv2d_backward_data(dy, w, (c["N"], c["C"], c["H"] + 5, c["W"]), c["s"], c["p"],
                                c["d"], c["G"], backend)


def test_conv2d_backends_agree_with_ref_larger():
    """A resnet-like layer (64 -> 64, 3x3, 16x16, batch 4): backends vs ref."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 32, 16, 16)).astype(np.float32)
    w = (rng.standard_normal((32, 32, 3, 3)) * 0.1).astype(np.float32)
    dy = rng.standard_normal((4, 32, 8, 8)).astype(np.float32)
    ref = _C.conv2d_backward(dy, x, w, 2, 1, 1, 1, True, True, True, "ref")
    _, rdx, rdw, _ = torch_conv(x, w, None, dict(s=(2, 2), p=(1, 1), d=(1, 1), G=1), dy)
    assert rel_err(ref[0], rdx) <= TOL and rel_err(ref[1], rdw) <= TOL
    for be in BACKENDS[1:]:
        got = _C.conv2d_backward(dy, x, w, 2, 1, 1, 1, True, True, True, be)
        for g, r in zip(got, ref):
            assert rel_err(g, r) <= TOL, be


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_vs_torch(backend):
    rng = np.random.default_rng(17)
    for (M, K, N, bias) in [(1, 1, 1, True), (1, 9, 4, False), (7, 13, 5, True),
                            (64, 128, 10, True), (33, 65, 17, False)]:
        x = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((N, K)).astype(np.float32)
        b = rng.standard_normal(N).astype(np.float32) if bias else None
        tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        tb = torch.tensor(b, dtype=torch.float64, requires_grad=True) if bias else None
        ty = F.linear(tx, tw, tb)
        dy = rng.standard_normal((M, N)).astype(np.float32)
        ty.backward(torch.tensor(dy, dtype=torch.float64))
        y = _C.linear_forward(x, w, b, backend)
        assert rel_err(y, ty.detach().numpy()) <= TOL, (backend, M, K, N)
        dx, dw, db = _C.linear_backward(dy, x, w, True, True, bias, backend)
        assert rel_err(dx, tx.grad.numpy()) <= TOL
        assert rel_err(dw, tw.grad.numpy()) <= TOL
        if bias:
            assert rel_err(db, tb.grad.numpy()) <= TOL
        else:
            assert db is None


@pytest.mark.skipif(not HAVE_QUEUE_STATS, reason="_C.default_queue_stats (queue binding) not built")
def test_every_product_goes_through_the_queue(monkeypatch):
    # dw as ONE conv job: the gemm formulation (ET_CONV_DW, csrc/ops/conv2d_dw.c) submits
    # groups x chunks matmul jobs instead; tests/test_conv_dw_gemm.py counts those
    monkeypatch.setenv("ET_CONV_DW", "conv")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)

    def jobs(fn):
        before = _C.default_queue_stats()
        out = fn()
        after = _C.default_queue_stats()
        assert after["completed"] - before["completed"] == after["submitted"] - before["submitted"]
        return after["submitted"] - before["submitted"], out

    for be in BACKENDS:
        n, y = jobs(lambda: _C.conv2d_forward(x, w, b, 1, 1, 1, 2, be))
        assert n == 1
        dy = np.ones_like(y)
        assert jobs(lambda: _C.conv2d_backward(dy, x, w, 1, 1, 1, 2, True, True, True, be))[0] == 2
        assert jobs(lambda: _C.conv2d_backward(dy, x, w, 1, 1, 1, 2, True, False, True, be))[0] == 1
        # db alone is CPU work: nothing submitted
        assert jobs(lambda: _C.conv2d_backward(dy, x, w, 1, 1, 1, 2, False, False, True, be))[0] == 0
        xl, wl = x.reshape(2, -1).copy(), rng.standard_normal((5, 144)).astype(np.float32)
        assert jobs(lambda: _C.linear_forward(xl, wl, None, be))[0] == 1
        dyl = np.ones((2, 5), np.float32)
        assert jobs(lambda: _C.linear_backward(dyl, xl, wl, True, True, True, be))[0] == 2
        assert jobs(lambda: _C.matmul(xl, wl, trans_b=True, backend=be))[0] == 1
        assert jobs(lambda: _C.conv2d_primitive(x, w, b, 1, 0, 1, 1, 2, be))[0] == 1
    # a rejected call submits nothing
    n, _ = jobs(lambda: pytest.raises(ValueError, _C.conv2d_forward, x, w, None, 0, 0, 1, 1))
    assert n == 0


# --- bad input ------------------------------------------------------------

X = np.ones((2, 4, 8, 8), np.float32)
W = np.ones((6, 2, 3, 3), np.float32)


@pytest.mark.parametrize("args, exc, pattern", [
    ((X[0], W, None, 1, 0, 1, 2), ValueError, r"conv2d_forward.*\(4, 8, 8\)"),          # ndim
    ((X, np.ascontiguousarray(W[:, :, 0]), None, 1, 0, 1, 2), ValueError, r"conv2d_forward.*\(6, 2, 3\)"),
    ((X, W, None, 1, 0, 1, 1), ValueError, r"conv2d_forward.*channels.*\(2, 4, 8, 8\).*\(6, 2, 3, 3\)"),
    ((X, np.ones((5, 2, 3, 3), np.float32), None, 1, 0, 1, 2), ValueError,
     r"conv2d_forward.*divisible.*\(5, 2, 3, 3\)"),
    ((X, W, None, 0, 0, 1, 2), ValueError, r"conv2d_forward.*stride.*\(2, 4, 8, 8\)"),
    ((X, W, None, (1, -2), 0, 1, 2), ValueError, r"conv2d_forward.*stride"),
    ((X, W, None, 1, -1, 1, 2), ValueError, r"conv2d_forward.*padding.*\(2, 4, 8, 8\)"),
    ((X, W, None, 1, 0, 0, 2), ValueError, r"conv2d_forward.*dilation"),
    ((X, np.ones((6, 2, 9, 3), np.float32), None, 1, 0, 1, 2), ValueError,
     r"conv2d_forward.*larger than the padded input.*\(6, 2, 9, 3\)"),
    ((X, W, None, 1, 0, 5, 2), ValueError, r"conv2d_forward.*larger"),
    ((np.ones((0, 4, 8, 8), np.float32), W, None, 1, 0, 1, 2), ValueError,
     r"conv2d_forward.*empty.*\(0, 4, 8, 8\)"),
    ((X.astype(np.float64), W, None, 1, 0, 1, 2), TypeError, r"conv2d_forward.*float.*\(2, 4, 8, 8\)"),
    ((X, W, np.ones(5, np.float32), 1, 0, 1, 2), ValueError, r"conv2d_forward.*bias.*\(5,\)"),
    ((X, W, None, 1, 0, 1, 0), ValueError, r"conv2d_forward.*groups"),
])
def test_conv2d_forward_bad_input(args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _C.conv2d_forward(*args)


def test_conv2d_backward_bad_input():
    dy = np.ones((2, 6, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"conv2d_backward.*grad_output.*\(2, 6, 5, 6\)"):
        _C.conv2d_backward(dy[:, :, :5].copy(), X, W, 1, 0, 1, 2, True, True, True)
    with pytest.raises(TypeError, match=r"conv2d_backward.*\(2, 6, 6, 6\)"):
        _C.conv2d_backward(dy.astype(np.float64), X, W, 1, 0, 1, 2, True, True, True)
    with pytest.raises(ValueError, match=r"conv2d_backward.*channels"):
        _C.conv2d_backward(dy, X, W, 1, 0, 1, 3, True, True, True)
    with pytest.raises(ValueError, match=r"conv2d_backward.*stride"):
        _C.conv2d_backward(dy, X, W, -1, 0, 1, 2, True, True, True)


def test_linear_bad_input():
    x, w = np.ones((3, 4), np.float32), np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match=r"linear_forward.*\(3, 4, 1\)"):
        _C.linear_forward(x[..., None].copy(), w, None)
    with pytest.raises(ValueError, match=r"linear_forward.*\(3, 4\).*\(5, 3\)"):
        _C.linear_forward(x, w[:, :3].copy(), None)
    with pytest.raises(ValueError, match=r"linear_forward.*empty.*\(0, 4\)"):
        _C.linear_forward(np.ones((0, 4), np.float32), w, None)
    with pytest.raises(TypeError, match=r"linear_forward.*float.*\(3, 4\)"):
        _C.linear_forward(x.astype(np.float64), w, None)
    with pytest.raises(ValueError, match=r"linear_forward.*bias"):
        _C.linear_forward(x, w, np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"linear_backward.*grad_output.*\(3, 4\)"):
        _C.linear_backward(np.ones((3, 4), np.float32), x, w, True, True, True)
