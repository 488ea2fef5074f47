"""Backends (ref, blas, onednn): the raw forward primitives vs references.

matmul is compared with numpy float64, conv2d_primitive with
torch.nn.functional.conv2d (asymmetric padding through F.pad). Tolerance:
max |err| / max |ref| <= 1e-4 (fp32 accumulation over at most a few
thousand terms stays around 1e-6). Also the onednn bounded primitive cache
(hits, misses, LRU evictions, bound, capacity changes) and backend names.
"""
import numpy as np
import pytest

from edgetrain import _C

TOL = 1e-4
BACKENDS = _C.backends()


def rel_err(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def test_backend_names():
    assert BACKENDS[0] == "ref"
    # this machine has OpenBLAS and oneDNN installed (Makefile's apt list)
    assert "blas" in BACKENDS
    assert "onednn" in BACKENDS
    assert len(set(BACKENDS)) == len(BACKENDS)


def test_unknown_backend_raises_naming_it():
    a = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="no_such_backend") as ei:
        _C.matmul(a, a, backend="no_such_backend")
    assert "ref" in str(ei.value)   # lists the available ones
    with pytest.raises(ValueError, match="tpu"):
        _C.conv2d_forward(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 1, 1), np.float32),
                          None, 1, 0, 1, 1, "tpu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_matmul_vs_numpy(backend, ta, tb):
    rng = np.random.default_rng(7 + 2 * ta + tb)
    for (M, K, N, bias) in [(1, 7, 5, False), (13, 17, 11, True), (64, 33, 1, True),
                            (37, 129, 70, False), (1, 1, 1, True), (200, 300, 150, True)]:
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        bb = rng.standard_normal(N).astype(np.float32) if bias else None
        y = _C.matmul(a, b, trans_a=ta, trans_b=tb, bias=bb, backend=backend)
        a64 = a.astype(np.float64).T if ta else a.astype(np.float64)
        b64 = b.astype(np.float64).T if tb else b.astype(np.float64)
        ref = a64 @ b64 + (bb.astype(np.float64) if bias else 0.0)
        assert y.shape == (M, N) and y.dtype == np.float32
        assert rel_err(y, ref) <= TOL, (backend, M, K, N, ta, tb, bias)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_bad_shapes(backend):
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"matmul.*\(3, 4\)"):
        _C.matmul(a, np.ones((5, 2), np.float32), backend=backend)
    with pytest.raises(ValueError, match="bias"):
        _C.matmul(a, np.ones((4, 2), np.float32), bias=np.ones(3, np.float32), backend=backend)
    with pytest.raises(TypeError, match="matmul"):
        _C.matmul(a.astype(np.float64), np.ones((4, 2), np.float32), backend=backend)


def conv_cases(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        G = int(rng.choice([1, 1, 2, 3]))
        Cg, OCg = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        KH, KW = int(rng.choice([1, 2, 3, 5])), int(rng.choice([1, 2, 3]))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pl = (int(rng.integers(0, 4)), int(rng.integers(0, 3)))
        ph = (int(rng.integers(0, 4)), int(rng.integers(0, 3)))
        H, W = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        if H + pl[0] + ph[0] < d[0] * (KH - 1) + 1 or W + pl[1] + ph[1] < d[1] * (KW - 1) + 1:
            continue
        out.append(dict(N=int(rng.integers(1, 4)), C=Cg * G, H=H, W=W, OC=OCg * G, KH=KH, KW=KW,
                        s=s, d=d, pl=pl, ph=ph, G=G, bias=bool(rng.integers(0, 2))))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_primitive_vs_torch(backend):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(11)
    for c in conv_cases(25, 3):
        x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
        w = rng.standard_normal((c["OC"], c["C"] // c["G"], c["KH"], c["KW"])).astype(np.float32)
        b = rng.standard_normal(c["OC"]).astype(np.float32) if c["bias"] else None
        y = _C.conv2d_primitive(x, w, b, c["s"], c["pl"], c["ph"], c["d"], c["G"], backend)
        # F.pad order: (left, right, top, bottom)
        xp = F.pad(torch.from_numpy(x).double(), (c["pl"][1], c["ph"][1], c["pl"][0], c["ph"][0]))
        ref = F.conv2d(xp, torch.from_numpy(w).double(),
                       None if b is None else torch.from_numpy(b).double(),
                       stride=c["s"], dilation=c["d"], groups=c["G"]).numpy()
        assert y.shape == ref.shape, (c, y.shape, ref.shape)
        assert rel_err(y, ref) <= TOL, (backend, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_primitive_rejects_bad_args(backend):
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="padding"):
        _C.conv2d_primitive(x, w, None, 1, (-1, 0), 0, 1, 1, backend)
    with pytest.raises(ValueError, match=r"larger than the padded input"):
        _C.conv2d_primitive(x, np.ones((4, 2, 7, 7), np.float32), None, 1, 0, 0, 1, 1, backend)
    with pytest.raises(ValueError, match="channels"):
        _C.conv2d_primitive(x, np.ones((4, 1, 3, 3), np.float32), None, 1, 0, 0, 1, 1, backend)


def test_im2col_col2im_vs_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    for c in conv_cases(10, 8):
        x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
        k = (c["KH"], c["KW"])
        cols = _C.im2col(x, k, c["s"], c["pl"], c["ph"], c["d"])
        xp = F.pad(torch.from_numpy(x), (c["pl"][1], c["ph"][1], c["pl"][0], c["ph"][0]))
        ref = F.unfold(xp, k, dilation=c["d"], stride=c["s"]).numpy()
        np.testing.assert_array_equal(cols, ref)
        # col2im is the adjoint of im2col: <im2col(x), g> == <x, col2im(g)>
        g = rng.standard_normal(cols.shape).astype(np.float32)
        back = _C.col2im(g, x.shape, k, c["s"], c["pl"], c["ph"], c["d"])
        assert back.shape == x.shape
        lhs = float((cols.astype(np.float64) * g).sum())
        rhs = float((x.astype(np.float64) * back).sum())
        assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs)), c


# --- the onednn bounded primitive cache ---------------------------------------

needs_onednn = pytest.mark.skipif("onednn" not in BACKENDS, reason="onednn backend not built here")


@pytest.fixture
def fresh_cache():
    old = _C.cache_stats()["capacity"]
    _C.clear_cache()
    yield
    _C.set_cache_capacity(old)
    _C.clear_cache()


@needs_onednn
def test_cache_hits_on_repeated_shape(fresh_cache):
    s = _C.cache_stats()
    assert s == {"hits": 0, "misses": 0, "evictions": 0, "size": 0, "capacity": s["capacity"]}
    assert s["capacity"] == 64   # the default
    a = np.ones((8, 5), np.float32)
    b = np.ones((5, 3), np.float32)
    for _ in range(3):
        _C.matmul(a, b, backend="onednn")
    s = _C.cache_stats()
    assert (s["misses"], s["hits"], s["size"]) == (1, 2, 1)
    # a different transpose / bias / shape is a different primitive
    _C.matmul(a.T.copy(), b, trans_a=True, backend="onednn")
    _C.matmul(a, b, bias=np.ones(3, np.float32), backend="onednn")
    x = np.ones((1, 2, 6, 6), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    _C.conv2d_primitive(x, w, None, 1, 0, 0, 1, 1, "onednn")
    _C.conv2d_primitive(x, w, None, 1, 0, 0, 1, 1, "onednn")
    _C.conv2d_primitive(x, w, None, 1, 1, 0, 1, 1, "onednn")   # other padding: miss
    s = _C.cache_stats()
    assert (s["misses"], s["hits"], s["size"], s["evictions"]) == (5, 3, 5, 0)
    # other backends never touch it
    _C.matmul(a, b, backend="ref")
    assert _C.cache_stats() == s


@needs_onednn
def test_cache_bound_and_eviction(fresh_cache):
    _C.set_cache_capacity(4)
    rng = np.random.default_rng(0)
    for n in range(1, 11):   # 10 distinct shapes through a 4-entry cache
        a = rng.standard_normal((n, 3)).astype(np.float32)
        b = rng.standard_normal((3, 2)).astype(np.float32)
        y = _C.matmul(a, b, backend="onednn")
        assert rel_err(y, a.astype(np.float64) @ b) <= TOL
        assert _C.cache_stats()["size"] <= 4
    s = _C.cache_stats()
    assert (s["misses"], s["evictions"], s["size"], s["capacity"]) == (10, 6, 4, 4)
    # LRU: the 4 most recent (n = 7..10) are kept, n = 1 was evicted
    _C.matmul(np.ones((10, 3), np.float32), np.ones((3, 2), np.float32), backend="onednn")
    assert _C.cache_stats()["hits"] == 1
    _C.matmul(np.ones((1, 3), np.float32), np.ones((3, 2), np.float32), backend="onednn")
    s = _C.cache_stats()
    assert (s["hits"], s["misses"], s["evictions"]) == (1, 11, 7)
    # shrinking evicts at once
    _C.set_cache_capacity(2)
    s = _C.cache_stats()
    assert (s["size"], s["capacity"], s["evictions"]) == (2, 2, 9)
    _C.clear_cache()
    assert _C.cache_stats() == {"hits": 0, "misses": 0, "evictions": 0, "size": 0, "capacity": 2}
    with pytest.raises(ValueError, match="capacity"):
        _C.set_cache_capacity(0)


@needs_onednn
def test_cache_many_conv_shapes_stays_bounded(fresh_cache):
    """A model with many distinct layers still trains: the cache evicts."""
    _C.set_cache_capacity(8)
    rng = np.random.default_rng(1)
    for i in range(20):
        x = rng.standard_normal((1, 2, 5 + i, 6)).astype(np.float32)
        w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
        _C.conv2d_forward(x, w, None, 1, 1, 1, 1, "onednn")
    s = _C.cache_stats()
    assert s["size"] == 8 and s["evictions"] == 12 and s["misses"] == 20
