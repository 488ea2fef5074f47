"""CPU-side kernels of edgetrain._C (csrc/kernels) against PyTorch.

Every case is seeded. Tolerances (float32):
  * max pooling: values and indices exact (same elements are selected);
  * sums/averages/normalisations: rtol 1e-5, atol 1e-6 (atol 1e-5 where the
    value is a difference of O(1) terms: batch-norm outputs and gradients,
    log_softmax), because the summation order differs from PyTorch's;
  * optimizers over 5 steps: rtol 1e-5, atol 1e-7 (PyTorch's vectorised
    kernels may fuse multiply-adds, we do not).
Invalid arguments must raise ShapeError (ValueError) / DtypeError (TypeError)
with a message naming the problem.
"""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the reference for the CPU kernels")
import torch.nn.functional as F  # noqa: E402

from edgetrain import _C  # noqa: E402

# torch's thread count is set once for the whole suite in conftest.py: changing
# it here would change torch's reductions (and max-pool tie-breaking) for every
# later test, e.g. the training-parity runs.

RTOL, ATOL = 1e-5, 1e-6


def close(ours, ref, rtol=RTOL, atol=ATOL, equal_nan=False):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, equal_nan=equal_nan)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def is_core_array(a):
    return isinstance(a.base, _C.Storage) and a.ctypes.data % 64 == 0


# ------------------------------------------------------------------ relu

def test_relu_forward_backward():
    rng = np.random.default_rng(0)
    for shape in [(1,), (3, 5), (2, 3, 4, 5), (70000,)]:
        x = randn(rng, *shape)
        x.flat[0] = 0.0
        xt = torch.from_numpy(x).requires_grad_()
        yt = torch.relu(xt)
        dy = randn(rng, *shape)
        yt.backward(torch.from_numpy(dy))
        y = _C.relu_forward(x)
        assert is_core_array(y)
        np.testing.assert_array_equal(y, yt.detach().numpy())
        np.testing.assert_array_equal(_C.relu_backward(dy, y), xt.grad.numpy())
    y = _C.relu_forward(np.array([np.nan, -1.0, 2.0], np.float32))
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == 2


# --------------------------------------------------------------- pooling

def pool_cases(rng, n, dilation=True):
    for _ in range(n):
        N = int(rng.choice([1, 2, 3]))
        C = int(rng.choice([1, 2, 3]))
        H, W = (int(v) for v in rng.integers(1, 13, size=2))
        k = tuple(int(v) for v in rng.integers(1, 5, size=2))
        s = tuple(int(v) for v in rng.integers(1, 4, size=2))
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        d = tuple(int(v) for v in rng.integers(1, 3, size=2)) if dilation else (1, 1)
        ceil = bool(rng.integers(0, 2))
        yield N, C, H, W, k, s, p, d, ceil


def test_max_pool2d_matches_torch():
    rng = np.random.default_rng(1)
    checked = rejected = 0
    for N, C, H, W, k, s, p, d, ceil in pool_cases(rng, 150):
        x = randn(rng, N, C, H, W)
        xt = torch.from_numpy(x).requires_grad_()
        try:
            yt, it = F.max_pool2d(xt, k, s, p, d, ceil_mode=ceil, return_indices=True)
        except RuntimeError:
            # torch rejects it (output too small): so must we, naming the input
            with pytest.raises(ValueError, match=r"input \(%d, %d, %d, %d\)" % (N, C, H, W)):
                _C.max_pool2d_forward(x, k, s, p, d, ceil)
            rejected += 1
            continue
        y, ind = _C.max_pool2d_forward(x, k, s, p, d, ceil)
        assert ind.dtype == np.int64 and is_core_array(y)
        # a window that holds no input element (possible with dilation and
        # padding) gives -inf; PyTorch's index there is h0*W + w0 of a
        # position past the input (outside the plane or aliasing the next
        # row), ours is -1 so that backward sends it no gradient
        valid = np.isfinite(y)
        assert (ind[~valid] == -1).all()
        np.testing.assert_array_equal(y, yt.detach().numpy())
        np.testing.assert_array_equal(ind[valid], it.numpy()[valid])
        dy = randn(rng, *y.shape)
        if valid.all():
            yt.backward(torch.from_numpy(dy))
            dx = _C.max_pool2d_backward(dy, ind, x.shape)
            close(dx, xt.grad)   # scatter-add of the same values
        checked += 1
    assert checked > 80 and rejected > 0


def test_max_pool2d_nan_and_3d_input():
    rng = np.random.default_rng(2)
    x = randn(rng, 2, 7, 9)   # (C, H, W)
    x[0, 1, 1] = np.nan
    x[1, 4, 4] = np.nan
    x[1, 4, 5] = np.nan      # two NaNs in one window: PyTorch keeps the last
    for ceil in (False, True):
        yt, it = F.max_pool2d(torch.from_numpy(x), 3, 2, 1, 1, ceil_mode=ceil, return_indices=True)
        y, ind = _C.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1), (1, 1), ceil)
        assert y.shape == tuple(yt.shape)
        np.testing.assert_array_equal(y, yt.numpy())   # NaN == NaN here
        np.testing.assert_array_equal(ind, it.numpy())
        assert np.isnan(y).sum() >= 2
    # backward of a 3D (unbatched) input, x_shape of length 3
    x = randn(rng, 2, 7, 9)
    xt = torch.from_numpy(x).requires_grad_()
    yt = F.max_pool2d(xt, 3, 2, 1)
    dy = randn(rng, *yt.shape)
    yt.backward(torch.from_numpy(dy))
    _, ind = _C.max_pool2d_forward(x, 3, 2, 1, 1, False)
    close(_C.max_pool2d_backward(dy, ind, x.shape), xt.grad)
    xt.grad = None
    yt = F.avg_pool2d(xt, 3, 2, 1, ceil_mode=True)
    yt.backward(torch.from_numpy(dy))
    close(_C.avg_pool2d_backward(dy, x.shape, 3, 2, 1, True, True), xt.grad)
    # ties and all -inf windows: the first in-bounds element of the window
    for fill in (-np.inf, 0.0):
        x = np.full((1, 2, 9, 11), fill, np.float32)
        for k, s, p, ceil in [(2, 2, 0, False), (3, 1, 1, False), (3, 2, 1, True)]:
            y, ind = _C.max_pool2d_forward(x, k, s, p, 1, ceil)
            yt, it = F.max_pool2d(torch.from_numpy(x), k, s, p, ceil_mode=ceil,
                                  return_indices=True)
            np.testing.assert_array_equal(y, yt.numpy())
            np.testing.assert_array_equal(ind, it.numpy())


def test_max_pool2d_stride_none_is_kernel():
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    y, _ = _C.max_pool2d_forward(x, 2, None, 0, 1, False)
    np.testing.assert_array_equal(y, F.max_pool2d(torch.from_numpy(x), 2).numpy())


def test_avg_pool2d_matches_torch():
    rng = np.random.default_rng(3)
    checked = 0
    for N, C, H, W, k, s, p, _, ceil in pool_cases(rng, 150, dilation=False):
        for cip in (True, False):
            x = randn(rng, N, C, H, W)
            xt = torch.from_numpy(x).requires_grad_()
            try:
                yt = F.avg_pool2d(xt, k, s, p, ceil_mode=ceil, count_include_pad=cip)
            except RuntimeError:
                with pytest.raises(ValueError, match="too small"):
                    _C.avg_pool2d_forward(x, k, s, p, ceil, cip)
                continue
            y = _C.avg_pool2d_forward(x, k, s, p, ceil, cip)
            close(y, yt)
            dy = randn(rng, *y.shape)
            yt.backward(torch.from_numpy(dy))
            close(_C.avg_pool2d_backward(dy, x.shape, k, s, p, ceil, cip), xt.grad)
            checked += 1
    assert checked > 150


def test_avg_pool2d_ceil_mode_divisor():
    # the last window of ceil_mode reaches past the padding: PyTorch divides
    # by the part inside input + padding (count_include_pad) or inside input
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    for cip in (True, False):
        ref = F.avg_pool2d(torch.from_numpy(x), 3, 2, 1, ceil_mode=True, count_include_pad=cip)
        y = _C.avg_pool2d_forward(x, 3, 2, 1, True, cip)
        assert y.shape == (1, 1, 4, 4) == tuple(ref.shape)
        close(y, ref)
        # corner window: rows/cols 5..7 clipped to 5..6 by the padding; one
        # real element, x[5, 5] = 35, divided by 2*2 (cip) or 1
        assert y[0, 0, 3, 3] == (35 / 4 if cip else 35)


def test_adaptive_avg_pool2d_matches_torch():
    rng = np.random.default_rng(4)
    for _ in range(60):
        N, C = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        H, W = (int(v) for v in rng.integers(1, 14, size=2))
        oh, ow = (int(v) for v in rng.integers(1, 9, size=2))   # also larger than input
        x = randn(rng, N, C, H, W)
        xt = torch.from_numpy(x).requires_grad_()
        yt = F.adaptive_avg_pool2d(xt, (oh, ow))
        y = _C.adaptive_avg_pool2d_forward(x, (oh, ow))
        close(y, yt)
        dy = randn(rng, *y.shape)
        yt.backward(torch.from_numpy(dy))
        close(_C.adaptive_avg_pool2d_backward(dy, x.shape), xt.grad)
    x = randn(rng, 3, 5, 5)   # 3D input, int output size
    close(_C.adaptive_avg_pool2d_forward(x, 1), F.adaptive_avg_pool2d(torch.from_numpy(x), 1))


def test_pooling_bad_arguments():
    x = np.zeros((1, 1, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"pad should be .*kernel_size \(3, 3\).*padding \(2, 2\)"):
        _C.max_pool2d_forward(x, 3, 1, 2, 1, False)
    with pytest.raises(ValueError, match="pad should be"):
        _C.avg_pool2d_forward(x, 2, 1, 2, False, True)
    with pytest.raises(ValueError, match=r"too small.*input \(1, 1, 5, 5\), kernel_size \(7, 7\), "
                                         r"stride \(7, 7\), padding \(0, 0\)"):
        _C.max_pool2d_forward(x, 7, 7, 0, 1, False)
    with pytest.raises(ValueError, match="kernel_size must be > 0"):
        _C.max_pool2d_forward(x, 0, 1, 0, 1, False)
    with pytest.raises(ValueError, match="stride must be > 0"):
        _C.avg_pool2d_forward(x, 2, (1, 0), 0, False, True)
    with pytest.raises(ValueError, match="dilation must be > 0"):
        _C.max_pool2d_forward(x, 2, 1, 0, 0, False)
    with pytest.raises(ValueError, match=r"3D \(C, H, W\) or 4D.*\(5, 5\)"):
        _C.max_pool2d_forward(np.zeros((5, 5), np.float32), 2, 2, 0, 1, False)
    with pytest.raises(TypeError, match="float32"):
        _C.avg_pool2d_forward(x.astype(np.float64), 2, 2, 0, False, True)
    with pytest.raises(TypeError, match="numpy array"):
        _C.max_pool2d_forward([[1.0]], 2, 2, 0, 1, False)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.max_pool2d_forward(np.zeros((1, 1, 5, 10), np.float32)[..., ::2], 2, 2, 0, 1, False)
    with pytest.raises(ValueError, match="output_size"):
        _C.adaptive_avg_pool2d_forward(x, (0, 1))
    y, ind = _C.max_pool2d_forward(x, 2, 2, 0, 1, False)
    with pytest.raises(ValueError, match="indices shape"):
        _C.max_pool2d_backward(y, ind[:, :, :1].copy(), x.shape)
    bad = ind.copy()
    bad[0, 0, 1, 1] = 25
    with pytest.raises(ValueError, match="index 25"):
        _C.max_pool2d_backward(y, bad, x.shape)
    with pytest.raises(ValueError, match="dy shape"):
        _C.avg_pool2d_backward(np.zeros((1, 1, 3, 3), np.float32), x.shape, 2, 2, 0, False, True)
    with pytest.raises(ValueError, match="x_shape"):
        _C.adaptive_avg_pool2d_backward(y, (5, 5))
    # absurd sizes are refused before any index arithmetic can overflow
    with pytest.raises(ValueError, match="must be <= 2147483647"):
        _C.max_pool2d_forward(x, 2, 1 << 62, 0, 1, True)
    with pytest.raises(ValueError, match="output_size"):
        _C.adaptive_avg_pool2d_forward(x, (1 << 40, 1))
    assert issubclass(_C.ShapeError, ValueError) and issubclass(_C.DtypeError, TypeError)


# ------------------------------------------------------------ batch norm

@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (1, 2, 3, 3), (6, 5), (2, 4, 1, 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_forward_backward(shape, affine):
    rng = np.random.default_rng(5)
    C = shape[1]
    x = randn(rng, *shape) * 3 + 1.5
    w = randn(rng, C) if affine else None
    b = randn(rng, C) if affine else None
    rm, rv = randn(rng, C), np.abs(randn(rng, C)) + 0.5
    rm_t, rv_t = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_() if affine else None
    bt = torch.from_numpy(b).requires_grad_() if affine else None
    yt = F.batch_norm(xt, rm_t, rv_t, wt, bt, training=True, momentum=0.1, eps=1e-5)
    y, sm, si = _C.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5)
    close(y, yt, atol=1e-5)
    close(rm, rm_t)
    close(rv, rv_t)   # unbiased variance in the running update
    dims = (0,) + tuple(range(2, len(shape)))
    xd = x.astype(np.float64)
    close(sm, xd.mean(axis=dims))
    close(si, 1 / np.sqrt(xd.var(axis=dims) + 1e-5))
    dy = randn(rng, *shape)
    yt.backward(torch.from_numpy(dy))
    dx, dw, db = _C.batch_norm_backward(dy, x, w, sm, si, True)
    close(dx, xt.grad, atol=1e-5)
    if affine:
        close(dw, wt.grad, atol=1e-5)
        close(db, bt.grad, atol=1e-5)
    else:
        # no weight: no dweight; dbias is still the per-channel sum of dy
        assert dw is None
        close(db, dy.astype(np.float64).sum(axis=dims))


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (1, 3, 1, 1), (5, 2)])
def test_batch_norm_eval_forward_backward(shape):
    rng = np.random.default_rng(6)
    C = shape[1]
    x, w, b = randn(rng, *shape), randn(rng, C), randn(rng, C)
    rm, rv = randn(rng, C), np.abs(randn(rng, C)) + 0.1
    rm0, rv0 = rm.copy(), rv.copy()
    xt = torch.from_numpy(x).requires_grad_()
    wt, bt = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_()
    yt = F.batch_norm(xt, torch.from_numpy(rm0), torch.from_numpy(rv0), wt, bt,
                      training=False, eps=1e-3)
    y, sm, si = _C.batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-3)
    close(y, yt, atol=1e-5)
    np.testing.assert_array_equal(rm, rm0)   # eval leaves running stats alone
    np.testing.assert_array_equal(rv, rv0)
    dy = randn(rng, *shape)
    yt.backward(torch.from_numpy(dy))
    dx, dw, db = _C.batch_norm_backward(dy, x, w, sm, si, False)
    close(dx, xt.grad, atol=1e-5)
    close(dw, wt.grad, atol=1e-5)
    close(db, bt.grad, atol=1e-5)


def test_batch_norm_running_stats_over_steps():
    rng = np.random.default_rng(7)
    bn = torch.nn.BatchNorm2d(3, eps=1e-5, momentum=0.2)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(randn(rng, 3)))
        bn.bias.copy_(torch.from_numpy(randn(rng, 3)))
    w, b = bn.weight.detach().numpy().copy(), bn.bias.detach().numpy().copy()
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    for step in range(5):
        x = randn(rng, 2 + step, 3, 4, 3) * (step + 1) + step
        yt = bn(torch.from_numpy(x))
        y, _, _ = _C.batch_norm_forward(x, w, b, rm, rv, True, 0.2, 1e-5)
        close(y, yt, atol=1e-5)
        close(rm, bn.running_mean)
        close(rv, bn.running_var)
    bn.eval()
    x = randn(rng, 2, 3, 4, 3)
    y, _, _ = _C.batch_norm_forward(x, w, b, rm, rv, False, 0.2, 1e-5)
    close(y, bn(torch.from_numpy(x)), atol=1e-5)


def test_batch_norm_bad_arguments():
    x = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        _C.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        _C.batch_norm_forward(np.zeros((1, 3, 1, 1), np.float32), None, None, None, None,
                              True, 0.1, 1e-5)
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="running_mean must be defined in evaluation mode"):
        _C.batch_norm_forward(x, None, None, None, None, False, 0.1, 1e-5)
    with pytest.raises(ValueError, match=r"weight shape \(4,\) must be \(3,\)"):
        _C.batch_norm_forward(x, np.ones(4, np.float32), None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, H, W\)"):
        _C.batch_norm_forward(np.zeros(3, np.float32), None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="both be given"):
        _C.batch_norm_forward(x, None, None, np.zeros(3, np.float32), None, True, 0.1, 1e-5)
    s = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="dy shape"):
        _C.batch_norm_backward(np.zeros((2, 3, 4, 5), np.float32), x, None, s, s, True)
    with pytest.raises(TypeError, match="float32"):
        _C.batch_norm_forward(x.astype(np.float16), None, None, None, None, True, 0.1, 1e-5)


# ----------------------------------------------- log_softmax / nll_loss

def test_log_softmax_and_nll_match_torch():
    rng = np.random.default_rng(8)
    for N, C, scale in [(1, 1, 1.0), (1, 10, 1.0), (7, 3, 5.0), (32, 10, 1.0), (5, 13, 1000.0)]:
        x = randn(rng, N, C) * scale   # scale 1000: exp overflows without the max shift
        t = rng.integers(0, C, size=N).astype(np.int64)
        xt = torch.from_numpy(x).requires_grad_()
        lt = F.log_softmax(xt, dim=1)
        lt.retain_grad()
        loss_t = F.nll_loss(lt, torch.from_numpy(t))
        loss_t.backward()
        y = _C.log_softmax_forward(x)
        assert np.isfinite(y).all()
        close(y, lt, atol=1e-5)
        loss = _C.nll_loss_forward(y, t)
        assert isinstance(loss, float)
        assert loss == pytest.approx(loss_t.item(), rel=1e-5, abs=1e-5)
        dlogp = _C.nll_loss_backward(t, N, C, 1.0)
        close(dlogp, lt.grad)
        close(_C.log_softmax_backward(dlogp, y), xt.grad, atol=1e-5)
    # a general upstream gradient through log_softmax
    x, dy = randn(rng, 4, 6), randn(rng, 4, 6)
    xt = torch.from_numpy(x).requires_grad_()
    F.log_softmax(xt, 1).backward(torch.from_numpy(dy))
    close(_C.log_softmax_backward(dy, _C.log_softmax_forward(x)), xt.grad, atol=1e-5)
    close(_C.nll_loss_backward(np.array([1, 0], np.int64), 2, 3, 0.5),
          np.array([[0, -0.25, 0], [-0.25, 0, 0]], np.float32))


def test_softmax_nll_bad_arguments():
    logp = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"target 7 at index 2 is out of bounds \[0, 4\)"):
        _C.nll_loss_forward(logp, np.array([0, 1, 7], np.int64))
    with pytest.raises(ValueError, match=r"target -1 at index 0"):
        _C.nll_loss_backward(np.array([-1, 1, 2], np.int64), 3, 4, 1.0)
    with pytest.raises(TypeError, match="int64"):
        _C.nll_loss_forward(logp, np.array([0, 1, 2], np.int32))
    with pytest.raises(ValueError, match=r"target shape \(2,\)"):
        _C.nll_loss_forward(logp, np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="must be 2D"):
        _C.log_softmax_forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="y shape"):
        _C.log_softmax_backward(logp, np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="N=4"):
        _C.nll_loss_backward(np.array([0, 1, 2], np.int64), 4, 4, 1.0)


# ------------------------------------------------------------ optimizers

SGD_COMBOS = [
    dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(momentum=0.0, dampening=0.0, weight_decay=1e-2, nesterov=False),
    dict(momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(momentum=0.9, dampening=0.5, weight_decay=1e-2, nesterov=False),
    dict(momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True),
    dict(momentum=0.5, dampening=0.0, weight_decay=5e-2, nesterov=True),
]


@pytest.mark.parametrize("cfg", SGD_COMBOS, ids=lambda c: "m%(momentum)g-d%(dampening)g-"
                         "wd%(weight_decay)g-n%(nesterov)d" % c)
def test_sgd_matches_torch_optim(cfg):
    rng = np.random.default_rng(9)
    p0 = randn(rng, 3, 17)
    pt = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.SGD([pt], lr=0.1, **cfg)
    p, buf = p0.copy(), np.zeros_like(p0)
    for step in range(5):
        g = randn(rng, 3, 17)
        pt.grad = torch.from_numpy(g.copy())
        opt.step()
        _C.sgd_step(p, g, buf if cfg["momentum"] else None, 0.1, cfg["momentum"],
                    cfg["dampening"], cfg["weight_decay"], cfg["nesterov"], step == 0)
        close(p, pt, atol=1e-7)
        if cfg["momentum"]:
            close(buf, opt.state[pt]["momentum_buffer"], atol=1e-7)


@pytest.mark.parametrize("lr,betas,eps,wd", [(1e-3, (0.9, 0.999), 1e-8, 0.0),
                                             (1e-1, (0.8, 0.99), 1e-6, 1e-2),
                                             (5e-2, (0.0, 0.5), 1e-8, 0.0),
                                             (1e-2, (0.95, 0.999), 1e-3, 0.1)])
def test_adam_matches_torch_optim(lr, betas, eps, wd):
    rng = np.random.default_rng(10)
    p0 = randn(rng, 5, 11)
    pt = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([pt], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for step in range(1, 6):
        g = randn(rng, 5, 11)
        pt.grad = torch.from_numpy(g.copy())
        opt.step()
        _C.adam_step(p, g, m, v, step, lr, betas[0], betas[1], eps, wd)
        close(p, pt, atol=1e-7)
        close(m, opt.state[pt]["exp_avg"], atol=1e-7)
        close(v, opt.state[pt]["exp_avg_sq"], atol=1e-7)


def test_large_tensors_take_the_parallel_path():
    # above the OpenMP thresholds: same results as PyTorch
    rng = np.random.default_rng(11)
    p0, g = randn(rng, 300, 300), randn(rng, 300, 300)
    pt = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([pt], lr=1e-2)
    pt.grad = torch.from_numpy(g.copy())
    opt.step()
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    _C.adam_step(p, g, m, v, 1, 1e-2, 0.9, 0.999, 1e-8, 0.0)
    close(p, pt, atol=1e-7)
    x = randn(rng, 8, 16, 32, 32)
    yt, it = F.max_pool2d(torch.from_numpy(x), 3, 2, 1, return_indices=True)
    y, ind = _C.max_pool2d_forward(x, 3, 2, 1, 1, False)
    np.testing.assert_array_equal(ind, it.numpy())
    y, _, _ = _C.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)
    close(y, F.batch_norm(torch.from_numpy(x), None, None, training=True), atol=1e-5)


def test_optim_bad_arguments():
    p, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero dampening"):
        _C.sgd_step(p, g, np.zeros(4, np.float32), 0.1, 0.9, 0.5, 0.0, True, True)
    with pytest.raises(ValueError, match="needs a momentum_buffer"):
        _C.sgd_step(p, g, None, 0.1, 0.9, 0.0, 0.0, False, True)
    with pytest.raises(ValueError, match=r"grad shape \(5,\) must match param shape \(4,\)"):
        _C.sgd_step(p, np.zeros(5, np.float32), None, 0.1, 0.0, 0.0, 0.0, False, False)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        _C.sgd_step(p, g, None, -0.1, 0.0, 0.0, 0.0, False, False)
    with pytest.raises(ValueError, match="step must be >= 1"):
        _C.adam_step(p, g, p.copy(), p.copy(), 0, 1e-3, 0.9, 0.999, 1e-8, 0.0)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        _C.adam_step(p, g, p.copy(), p.copy(), 1, 1e-3, 0.9, 1.0, 1e-8, 0.0)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _C.adam_step(ro, g, p.copy(), p.copy(), 1, 1e-3, 0.9, 0.999, 1e-8, 0.0)
    with pytest.raises(TypeError, match="float32"):
        _C.sgd_step(p.astype(np.float64), g, None, 0.1, 0.0, 0.0, 0.0, False, False)
