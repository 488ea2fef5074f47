"""Prepacked int8 weights (issue 5; csrc/quant/wcache.h).

The int8 forward of conv2d / linear keeps each weight's per-output-channel s8
quantization (and, on onednn, its blocked layout) between calls. These tests
check that the cache (1) changes no result: bit for bit equal to the results
with the cache off; (2) is never stale: after every way the public API lets a
weight change, the next forward equals a forward with the cache off on the
changed weight (and differs from the old result); (3) stays bounded and frees
the entry of a weight that dies.

Cache on / off is switched with _C.set_weight_cache_capacity (0 disables it).
"""
import gc
import threading

import numpy as np
import pytest

import edgetrain as et
from edgetrain import _C
import edgetrain.nn.functional as F

BACKENDS = [b for b in ("onednn", "ref") if b in et.backends()]


@pytest.fixture(autouse=True)
def _fresh_cache():
    _C.set_weight_cache_capacity(-1)   # the default
    _C.clear_weight_cache()
    yield
    _C.set_weight_cache_capacity(-1)
    _C.clear_weight_cache()


def _rng(seed=0):
    return np.random.default_rng(seed)


def _t(a, requires_grad=False):
    return et.tensor(np.asarray(a, dtype=np.float32), requires_grad=requires_grad)


def _uncached(fn):
    """fn() with the cache disabled (the reference: quantized on the call)."""
    _C.set_weight_cache_capacity(0)
    try:
        return fn()
    finally:
        _C.set_weight_cache_capacity(-1)


def _stats():
    return _C.weight_cache_stats()


# ---------------------------------------------------------------------------
# 1. bit-identical results
CONV_CASES = [
    # (x shape, w shape, stride, padding, groups, nonneg x)
    ((1, 3, 17, 15), (8, 3, 3, 3), 2, 1, 1, False),     # signed input: shifted + padded path
    ((2, 16, 9, 9), (24, 16, 3, 3), 1, 1, 1, True),     # post-ReLU (u8) input
    ((1, 8, 7, 7), (8, 2, 3, 3), 1, 0, 4, True),        # grouped
    ((1, 32, 6, 6), (16, 32, 1, 1), 1, 0, 1, False),    # 1x1
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_int8_bit_identical_with_cache(backend, case):
    xs, ws, stride, pad, groups, nonneg = case
    r = _rng(1)
    x = r.standard_normal(xs).astype(np.float32)
    if nonneg:
        x = np.maximum(x, 0)
    x, w, b = _t(x), _t(r.standard_normal(ws) * 0.2), _t(r.standard_normal(ws[0]))

    def run():
        with et.no_grad(), et.backend(backend), et.precision("int8"):
            return F.conv2d(x, w, b, stride=stride, padding=pad, groups=groups).numpy().copy()

    ref = _uncached(run)
    s0 = _stats()
    first, second, third = run(), run(), run()
    s1 = _stats()
    assert s1["misses"] - s0["misses"] == 1 and s1["hits"] - s0["hits"] == 2, s1
    for y in (first, second, third):
        np.testing.assert_array_equal(y, ref)
    # the int8 result is not the fp32 one (the int8 path really ran)
    with et.no_grad(), et.backend(backend):
        y32 = F.conv2d(x, w, b, stride=stride, padding=pad, groups=groups).numpy()
    assert not np.array_equal(y32, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_int8_bit_identical_with_cache(backend):
    r = _rng(2)
    x, w, b = _t(r.standard_normal((5, 40))), _t(r.standard_normal((12, 40))), _t(r.standard_normal(12))

    def run():
        with et.no_grad(), et.backend(backend), et.precision("int8"):
            return F.linear(x, w, b).numpy().copy()

    ref = _uncached(run)
    a, c = run(), run()
    np.testing.assert_array_equal(a, ref)
    np.testing.assert_array_equal(c, ref)


def test_onednn_blocked_weights_reused():
    if "onednn" not in et.backends():
        pytest.skip("onednn backend not built here")
    r = _rng(3)
    x = _t(np.maximum(r.standard_normal((1, 16, 12, 12)), 0))
    conv = et.nn.Conv2d(16, 32, 3, padding=1)
    conv.eval()
    with et.no_grad(), et.backend("onednn"), et.precision("int8"):
        conv(x)
        a0 = _stats()["aux_hits"]
        conv(x)
        conv(x)
    assert _stats()["aux_hits"] - a0 == 2   # the weight reorder was skipped twice


def test_model_int8_eval_bit_identical():
    et.manual_seed(0)
    m = et.models.lenet()
    m.eval()
    x = _t(_rng(4).standard_normal((3, 1, 28, 28)))

    def run():
        with et.no_grad(), et.precision("int8"):
            return m(x).numpy().copy()

    ref = _uncached(run)
    for _ in range(3):
        np.testing.assert_array_equal(run(), ref)


# ---------------------------------------------------------------------------
# 2. every way a weight can change makes the cache miss
def _conv_and_input(seed=5):
    et.manual_seed(seed)
    conv = et.nn.Conv2d(4, 6, 3, padding=1)
    x = _t(_rng(seed).standard_normal((2, 4, 8, 8)))
    return conv, x


def _fwd(conv, x):
    with et.no_grad(), et.precision("int8"):
        return conv(x).numpy().copy()


def _sgd(conv, x):
    opt = et.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    with et.precision("int8"):
        conv(x).sum().backward()
    opt.step()


def _adam(conv, x):
    opt = et.optim.Adam(conv.parameters(), lr=0.05)
    with et.precision("int8"):
        conv(x).sum().backward()
    opt.step()


def _load_state_dict(conv, x):
    sd = conv.state_dict()
    sd["weight"] = sd["weight"] * -0.5
    conv.load_state_dict(sd)


def _checkpoint(conv, x, tmp_path):
    other = et.nn.Conv2d(4, 6, 3, padding=1)   # fresh random weights
    path = tmp_path / "c.etc"
    et.save(other.state_dict(), str(path))
    conv.load_state_dict(et.load(str(path)))


def _numpy_view(conv, x):
    with et.no_grad():
        conv.weight.detach().numpy()[0, 0, 0, 0] += 3.0   # one element, through a view


def _numpy_view_tail(conv, x):
    # the last element: a check that only sampled the start would miss it
    with et.no_grad():
        conv.weight.detach().numpy().reshape(-1)[-1] -= 2.0


def _data_assign(conv, x):
    conv.weight.data = et.tensor(conv.weight.detach().numpy() * 1.5)


def _inplace_ops(conv, x):
    with et.no_grad():
        conv.weight.mul_(0.5)


def _inplace_add(conv, x):
    with et.no_grad():
        conv.weight.add_(et.tensor(np.full(conv.weight.shape, 0.01, np.float32)))


def _setitem(conv, x):
    with et.no_grad():
        conv.weight[1] = 0.25


def _copy_(conv, x):
    with et.no_grad():
        conv.weight.copy_(et.tensor(_rng(9).standard_normal(conv.weight.shape).astype(np.float32)))


def _init(conv, x):
    et.nn.init.uniform_(conv.weight, -1.0, 1.0)


MUTATIONS = {"sgd_step": _sgd, "adam_step": _adam, "load_state_dict": _load_state_dict,
             "numpy_view": _numpy_view, "numpy_view_last_element": _numpy_view_tail,
             "data_assign": _data_assign, "mul_": _inplace_ops, "add_": _inplace_add,
             "setitem": _setitem, "copy_": _copy_, "nn_init": _init}


@pytest.mark.parametrize("name", sorted(MUTATIONS) + ["checkpoint"])
def test_every_mutation_invalidates(name, tmp_path):
    conv, x = _conv_and_input()
    old = _fwd(conv, x)
    np.testing.assert_array_equal(_fwd(conv, x), old)   # served from the cache
    w_before = conv.weight.detach().numpy().copy()
    if name == "checkpoint":
        _checkpoint(conv, x, tmp_path)
    else:
        MUTATIONS[name](conv, x)
    assert not np.array_equal(conv.weight.detach().numpy(), w_before), "the mutation did nothing"
    got = _fwd(conv, x)
    want = _uncached(lambda: _fwd(conv, x))
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, old)
    np.testing.assert_array_equal(_fwd(conv, x), want)   # and cached again


def test_from_numpy_source_write_invalidates():
    r = _rng(6)
    src = (r.standard_normal((6, 4, 3, 3)) * 0.3).astype(np.float32)
    w = et.from_numpy(src)
    x = _t(r.standard_normal((1, 4, 8, 8)))

    def run():
        with et.no_grad(), et.precision("int8"):
            return F.conv2d(x, w, None, padding=1).numpy().copy()

    old = run()
    src[3] *= -1.0            # the user's array, which w shares
    got = run()
    np.testing.assert_array_equal(got, _uncached(run))
    assert not np.array_equal(got, old)


def test_precision_changes_and_backends():
    conv, x = _conv_and_input(7)
    a = _fwd(conv, x)
    with et.no_grad():
        f32 = conv(x).numpy().copy()
    with et.no_grad(), et.precision("bf16"):
        conv(x)
    np.testing.assert_array_equal(_fwd(conv, x), a)
    assert not np.array_equal(a, f32)
    for b in BACKENDS:   # one entry serves every backend: the s8 weight is backend-independent
        with et.backend(b):
            np.testing.assert_array_equal(_fwd(conv, x), _uncached(lambda: _fwd(conv, x)))


def test_stale_entry_counted_and_requantized():
    conv, x = _conv_and_input(8)
    _fwd(conv, x)
    s0 = _stats()
    with et.no_grad():
        conv.weight.mul_(2.0)
    _fwd(conv, x)
    s1 = _stats()
    assert s1["stale"] - s0["stale"] == 1 and s1["entries"] == s0["entries"]


def test_nan_weight_still_raises_and_recovers():
    conv, x = _conv_and_input(10)
    good = _fwd(conv, x)
    with et.no_grad():
        conv.weight.detach().numpy()[2, 1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _fwd(conv, x)
    with et.no_grad():
        conv.weight.detach().numpy()[2, 1, 0, 0] = 0.0
    np.testing.assert_array_equal(_fwd(conv, x), _uncached(lambda: _fwd(conv, x)))
    assert good.shape == (2, 6, 8, 8)


# ---------------------------------------------------------------------------
# 3. bounded; entries die with their weight
def test_capacity_bounds_the_cache():
    r = _rng(11)
    x = _t(r.standard_normal((1, 8, 6, 6)))
    ws = [_t(r.standard_normal((16, 8, 3, 3))) for _ in range(4)]
    one = 16 * 8 * 9 * 5 + 16 * 4          # f32 copy + s8 + scales of one weight
    _C.set_weight_cache_capacity(2 * one + 100)   # room for two weights
    s0 = _stats()   # counters are process-wide: compare differences
    outs = []
    for _ in range(2):
        for w in ws:
            # ref backend: no oneDNN blocked layouts (aux blobs) taking room
            with et.no_grad(), et.precision("int8"), et.backend("ref"):
                outs.append(F.conv2d(x, w).numpy().copy())
            s = _stats()
            assert s["bytes"] <= s["capacity"] and s["entries"] <= 2, s
    # a cyclic pattern larger than the cache: the first two stay cached, the
    # others bypass (no thrashing: LRU would evict each entry before its reuse)
    s = _stats()
    assert s["evictions"] == s0["evictions"] and s["hits"] - s0["hits"] == 2, s
    for a, b in zip(outs[:4], outs[4:]):
        np.testing.assert_array_equal(a, b)
    # idle entries age out: after > 256 lookups of other weights, new ones evict them
    for _ in range(140):
        for w in ws[2:]:
            with et.no_grad(), et.precision("int8"), et.backend("ref"):
                F.conv2d(x, w)
    s = _stats()
    assert s["evictions"] - s0["evictions"] >= 2 and s["entries"] <= 2, s
    assert s["bytes"] <= s["capacity"], s
    with et.no_grad(), et.precision("int8"), et.backend("ref"):
        np.testing.assert_array_equal(F.conv2d(x, ws[3]).numpy(), outs[3])
    _C.set_weight_cache_capacity(0)
    assert _stats()["entries"] == 0 and _stats()["bytes"] == 0


def test_weight_larger_than_capacity_not_cached():
    conv, x = _conv_and_input(12)
    _C.set_weight_cache_capacity(64)
    a, b = _fwd(conv, x), _fwd(conv, x)
    np.testing.assert_array_equal(a, b)
    assert _stats()["entries"] == 0


def test_entry_freed_when_weight_dies():
    conv, x = _conv_and_input(13)
    _fwd(conv, x)
    assert _stats()["entries"] == 1 and _stats()["bytes"] > 0
    del conv
    gc.collect()
    assert _stats()["entries"] == 0 and _stats()["bytes"] == 0


def test_threads_share_entries_safely():
    # _C directly: et.no_grad() / et.precision() are process-wide, and
    # threads entering / leaving them out of order would leak their state
    r = _rng(14)
    x = r.standard_normal((2, 4, 8, 8)).astype(np.float32)
    w = r.standard_normal((6, 4, 3, 3)).astype(np.float32)
    be = BACKENDS[0]

    def run():
        return _C.conv2d_forward_lowp(x, w, None, (1, 1), (1, 1), (1, 1), 1,
                                      precision="int8", backend=be)

    want = _uncached(run)
    errs = []

    def work():
        try:
            for _ in range(5):
                np.testing.assert_array_equal(run(), want)
        except Exception as e:   # noqa: BLE001 - reported below
            errs.append(e)

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs


# ---------------------------------------------------------------------------
# 4. frozen convolutions in training (edgetrain train --train-only fc)
def test_frozen_conv_training_matches_uncached():
    def train(cache):
        _C.set_weight_cache_capacity(-1 if cache else 0)
        _C.clear_weight_cache()
        et.manual_seed(0)
        m = et.models.lenet()
        for n, p in m.named_parameters():
            if not n.startswith("fc"):
                p.requires_grad = False
        opt = et.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
        r = _rng(15)
        x = _t(r.standard_normal((4, 1, 28, 28)))
        y = et.tensor(r.integers(0, 10, 4), dtype="int64")
        losses = []
        with et.precision("int8"):
            for _ in range(3):
                opt.zero_grad()
                loss = F.cross_entropy(m(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
        return losses, [p.detach().numpy().copy() for p in m.parameters()]

    la, pa = train(False)
    lb, pb = train(True)
    assert la == lb
    for a, b in zip(pa, pb):
        np.testing.assert_array_equal(a, b)
    assert _stats()["hits"] > 0


# ---------------------------------------------------------------------------
# 5. max_pool2d without argmax indices when nothing will backpropagate
def _pool_no_indices_supported():
    try:
        _C.max_pool2d_forward(np.zeros((1, 1, 2, 2), np.float32), 2, return_indices=False)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize("case", [((1, 8, 23, 21), 3, 2, 1, 1, False),
                                  ((2, 3, 9, 11), 2, 2, 0, 1, True),
                                  ((1, 2, 10, 10), 3, 1, 1, 2, False),
                                  ((1, 4, 8, 8), 3, 3, 1, 1, True)])
def test_max_pool_without_indices_bit_identical(case):
    if not _pool_no_indices_supported():
        pytest.skip("_C.max_pool2d_forward has no return_indices argument: "
                    "PATCHES/bind_kernels.patch (helper prepack) not applied")
    shape, k, s, p, d, cm = case
    x = _rng(16).standard_normal(shape).astype(np.float32)
    x.reshape(-1)[7] = np.nan          # PyTorch's rule: a NaN wins its window
    x.reshape(-1)[-3] = -np.inf
    y1, i1 = _C.max_pool2d_forward(x, k, s, p, d, cm)
    y2, i2 = _C.max_pool2d_forward(x, k, s, p, d, cm, return_indices=False)
    assert i1 is not None and i1.dtype == np.int64 and i2 is None
    assert y1.tobytes() == y2.tobytes()


def test_max_pool_functional_grad_and_no_grad_agree():
    x = _t(_rng(17).standard_normal((2, 3, 12, 12)), requires_grad=True)
    y = F.max_pool2d(x, 3, 2, 1)
    with et.no_grad():
        y0 = F.max_pool2d(x, 3, 2, 1)
    assert y0.numpy().tobytes() == y.detach().numpy().tobytes()
    y.sum().backward()     # the recording call still has its indices
    g = x.grad.numpy()
    assert g.sum() == np.prod(y.shape)   # one 1 per output, scattered to its argmax


# ---------------------------------------------------------------------------
# which weights are cached: frozen / inference yes, trained no
@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_trained_weights_bypass_the_cache_frozen_ones_use_it(layer):
    """A weight that needs grad under grad mode changes every optimizer step:
    the nn layer passes cache_weight=False, so no entry (no ~1.5x memory, no
    compare). The same weight frozen (requires_grad False), or under no_grad,
    is cached and served on the next call."""
    et.manual_seed(0)
    m = et.nn.Conv2d(3, 8, 3) if layer == "conv" else et.nn.Linear(12, 8)
    a = _rng().standard_normal((2, 3, 6, 6) if layer == "conv" else (2, 12))
    x, xg = _t(a), _t(a, requires_grad=True)

    def delta(fn):
        s0 = _stats()
        fn()
        s1 = _stats()
        return s1["entries"], s1["hits"] - s0["hits"], s1["misses"] - s0["misses"]

    with et.precision("int8"):
        # trained: bypasses the cache (nothing looked up, nothing kept)
        assert delta(lambda: [m(x).sum().backward() for _ in range(2)]) == (0, 0, 0)

        def infer():
            with et.no_grad():
                m(x)
                m(x)
        assert delta(infer) == (1, 1, 1)            # inference: cached, then served
        _C.clear_weight_cache()
        m.weight.requires_grad = False              # a frozen layer in a training step
        assert delta(lambda: [m(xg).sum().backward() for _ in range(2)]) == (1, 1, 1)
