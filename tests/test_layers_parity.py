"""Per-layer parity with PyTorch, on every backend edgetrain built.

For each layer and each seeded random configuration, the same weights (torch's
state_dict loaded into edgetrain) and the same input run through
torch and edgetrain; outputs, the gradient of the input and of every
parameter (for the same random upstream gradient), and BatchNorm's running
statistics must agree within a relative error of 1e-4 (max |diff| / max |ref|).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edgetrain as et  # noqa: E402

RTOL = 1e-4
BACKENDS = et.backends()


def rel_err(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert a.shape == ref.shape, f"shape {a.shape} != reference {ref.shape}"
    scale = max(np.abs(ref).max(initial=0.0), 1e-12)
    return np.abs(a - ref).max(initial=0.0) / scale


def assert_close(a, ref, what):
    e = rel_err(a, ref)
    assert e <= RTOL, f"{what}: relative error {e:.3g} > {RTOL}"


def check_layer(et_layer, t_layer, x, backend, seed=0, train=True, extra_input=None):
    """Forward + backward through both layers; compares output, input
    gradient, parameter gradients and buffers."""
    torch.manual_seed(seed)
    et_layer.load_state_dict({k: v.detach() for k, v in t_layer.state_dict().items()})
    et_layer.train(train)
    t_layer.train(train)
    xt = torch.tensor(x, requires_grad=True)
    xe = et.tensor(x, requires_grad=True)
    with et.backend(backend):
        ye = et_layer(xe)
    yt = t_layer(xt)
    assert_close(ye.detach().numpy(), yt.detach().numpy(), "output")
    g = np.random.default_rng(seed + 1).standard_normal(yt.shape).astype(np.float32)
    yt.backward(torch.tensor(g))
    with et.backend(backend):
        ye.backward(et.tensor(g))
    assert_close(xe.grad.numpy(), xt.grad.numpy(), "input gradient")
    tparams = dict(t_layer.named_parameters())
    eparams = dict(et_layer.named_parameters())
    assert list(eparams) == list(tparams)
    for name, tp in tparams.items():
        assert eparams[name].grad is not None, f"{name}.grad is None"
        assert_close(eparams[name].grad.numpy(), tp.grad.numpy(), f"{name}.grad")
    tbufs = dict(t_layer.named_buffers())
    ebufs = dict(et_layer.named_buffers())
    assert list(ebufs) == list(tbufs)
    for name, tb in tbufs.items():
        if tb.dtype == torch.int64:
            assert int(ebufs[name].item()) == int(tb.item()), name
        else:
            assert_close(ebufs[name].numpy(), tb.numpy(), f"buffer {name}")


# ---------------------------------------------------------------------------
# Conv2d: hand-picked corner cases + seeded random ones (25 in all)
# (N, C, H, W, OC, k, stride, padding, dilation, groups, bias)
CONV_FIXED = [
    (1, 1, 5, 5, 1, 1, 1, 0, 1, 1, True),          # batch 1, 1x1
    (2, 3, 7, 9, 4, 3, 1, 1, 1, 1, True),          # odd, non-square
    (2, 4, 8, 8, 6, 3, 2, 1, 1, 2, False),         # stride 2, groups 2, no bias
    (2, 6, 9, 7, 6, 3, 1, 1, 1, 6, True),          # depthwise
    (1, 3, 11, 10, 5, 5, 3, 2, 1, 1, True),        # k5 stride 3
    (2, 2, 9, 9, 3, 3, 1, 2, 2, 1, True),          # dilation 2
    (1, 3, 12, 12, 4, 7, 2, 3, 1, 1, True),        # k7 stride 2 pad 3 (resnet stem)
    (3, 2, 6, 5, 2, (2, 3), (1, 2), (0, 1), 1, 1, True),  # rectangular everything
    (2, 4, 5, 5, 8, 2, 1, 0, 1, 4, True),          # k2, groups 4, channel multiplier 2
    (1, 8, 4, 4, 8, 3, 1, 3, 1, 8, False),         # padding 3 > needed
]


def _random_conv_configs(n, seed=1234):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        groups = int(rng.choice([1, 1, 2, 3]))
        c = groups * int(rng.integers(1, 4))
        oc = groups * int(rng.integers(1, 4))
        k = int(rng.choice([1, 2, 3, 5]))
        s = int(rng.integers(1, 4))
        p = int(rng.integers(0, 4))
        d = int(rng.choice([1, 1, 2]))
        h, w = int(rng.integers(3, 11)), int(rng.integers(3, 11))
        if h + 2 * p < d * (k - 1) + 1 or w + 2 * p < d * (k - 1) + 1:
            continue
        out.append((int(rng.integers(1, 4)), c, h, w, oc, k, s, p, d, groups,
                    bool(rng.integers(0, 2))))
    return out


CONV_CONFIGS = CONV_FIXED + _random_conv_configs(25 - len(CONV_FIXED))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=[f"conv{i}" for i in range(len(CONV_CONFIGS))])
def test_conv2d(backend, cfg):
    n, c, h, w, oc, k, s, p, d, g, bias = cfg
    torch.manual_seed(hash(cfg) % 1000)
    tl = torch.nn.Conv2d(c, oc, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    el = et.nn.Conv2d(c, oc, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    x = np.random.default_rng(7).standard_normal((n, c, h, w)).astype(np.float32)
    check_layer(el, tl, x, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_padding_same(backend):
    for k, d in ((3, 1), (4, 1), (2, 2)):
        tl = torch.nn.Conv2d(2, 3, k, padding="same", dilation=d)
        el = et.nn.Conv2d(2, 3, k, padding="same", dilation=d)
        x = np.random.default_rng(k).standard_normal((2, 2, 6, 7)).astype(np.float32)
        check_layer(el, tl, x, backend)


# ---------------------------------------------------------------------------
LINEAR_CONFIGS = [(1, 1, 1, True), (2, 3, 4, True), (5, 17, 3, False), (7, 8, 9, True),
                  ((2, 3), 5, 6, True), (4, 64, 10, True), (3, 1, 7, False)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", LINEAR_CONFIGS, ids=[f"lin{i}" for i in range(len(LINEAR_CONFIGS))])
def test_linear(backend, cfg):
    n, fin, fout, bias = cfg
    lead = n if isinstance(n, tuple) else (n,)
    tl = torch.nn.Linear(fin, fout, bias=bias)
    el = et.nn.Linear(fin, fout, bias=bias)
    x = np.random.default_rng(3).standard_normal(lead + (fin,)).astype(np.float32)
    check_layer(el, tl, x, backend)


def test_linear_1d_input():
    tl = torch.nn.Linear(4, 3)
    el = et.nn.Linear(4, 3)
    x = np.random.default_rng(3).standard_normal((4,)).astype(np.float32)
    check_layer(el, tl, x, BACKENDS[0])


# ---------------------------------------------------------------------------
BN_CONFIGS = [(2, 3, 4, 5, 0.1), (1, 2, 3, 3, 0.1), (4, 1, 2, 7, 0.5), (3, 5, 1, 2, None),
              (8, 4, 3, 3, 0.1)]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cfg", BN_CONFIGS, ids=[f"bn{i}" for i in range(len(BN_CONFIGS))])
def test_batchnorm2d(cfg, train):
    n, c, h, w, momentum = cfg
    tl = torch.nn.BatchNorm2d(c, momentum=momentum)
    el = et.nn.BatchNorm2d(c, momentum=momentum)
    rng = np.random.default_rng(5)
    with torch.no_grad():   # non-trivial affine params and running stats
        tl.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, c).astype(np.float32)))
        tl.bias.copy_(torch.tensor(rng.standard_normal(c).astype(np.float32)))
        tl.running_mean.copy_(torch.tensor(rng.standard_normal(c).astype(np.float32)))
        tl.running_var.copy_(torch.tensor(rng.uniform(0.5, 2, c).astype(np.float32)))
    x = (rng.standard_normal((n, c, h, w)) * 2 + 1).astype(np.float32)
    check_layer(el, tl, x, BACKENDS[0], train=train)
    if train:   # a second step: running stats / num_batches_tracked keep matching
        check_layer_again = rng.standard_normal((n, c, h, w)).astype(np.float32)
        yt = tl(torch.tensor(check_layer_again))
        ye = el(et.tensor(check_layer_again))
        assert_close(ye.detach().numpy(), yt.detach().numpy(), "second output")
        assert_close(el.running_mean.numpy(), tl.running_mean.numpy(), "running_mean")
        assert_close(el.running_var.numpy(), tl.running_var.numpy(), "running_var")
        assert el.num_batches_tracked.item() == tl.num_batches_tracked.item() == 2


def test_batchnorm2d_no_affine_no_stats():
    for affine, track in ((False, True), (True, False), (False, False)):
        tl = torch.nn.BatchNorm2d(3, affine=affine, track_running_stats=track)
        el = et.nn.BatchNorm2d(3, affine=affine, track_running_stats=track)
        x = np.random.default_rng(21).standard_normal((2, 3, 4, 4)).astype(np.float32)
        check_layer(el, tl, x, BACKENDS[0], train=True)
        if track:
            check_layer(el, tl, x, BACKENDS[0], train=False)


# ---------------------------------------------------------------------------
def test_relu():
    x = np.random.default_rng(2).standard_normal((3, 4, 5, 6)).astype(np.float32)
    x[0, 0, 0, :3] = 0.0       # the gradient at exactly 0 is 0, as in torch
    check_layer(et.nn.ReLU(), torch.nn.ReLU(), x, BACKENDS[0])
    check_layer(et.nn.ReLU(inplace=True), torch.nn.ReLU(), x[0, 0], BACKENDS[0])


def test_relu6():
    x = (3 * np.random.default_rng(3).standard_normal((3, 4, 5, 6)) + 3).astype(np.float32)
    assert (x < 0).any() and (x > 6).any()
    # at exactly 0 and 6 torch's gradient is 0 (hardtanh's: not (x <= 0 or x >= 6))
    x[0, 0, 0, :4] = [0.0, 6.0, -0.0, np.nextafter(np.float32(6), np.float32(0))]
    check_layer(et.nn.ReLU6(), torch.nn.ReLU6(), x, BACKENDS[0])
    check_layer(et.nn.ReLU6(inplace=True), torch.nn.ReLU6(), x[0, 0], BACKENDS[0])
    v = np.array([-1, 0, 3, 6, 7, np.nan, np.inf, -np.inf], np.float32)
    xe, xt = et.tensor(v, requires_grad=True), torch.tensor(v, requires_grad=True)
    ye, yt = et.nn.functional.relu6(xe), torch.nn.functional.relu6(xt)
    np.testing.assert_array_equal(ye.detach().numpy(), yt.detach().numpy())   # NaN stays NaN
    ye.sum().backward()
    yt.sum().backward()
    np.testing.assert_array_equal(xe.grad.numpy(), xt.grad.numpy())           # 1 at NaN, as torch
    h = np.random.default_rng(4).standard_normal(20).astype(np.float32)
    np.testing.assert_array_equal(
        et.nn.functional.hardtanh(et.tensor(h), -0.5, 0.5).numpy(),
        torch.nn.functional.hardtanh(torch.from_numpy(h), -0.5, 0.5).numpy())
    t = et.tensor(v)                     # in place when no graph is recorded
    assert et.nn.functional.relu6(t, inplace=True) is t and np.nanmax(t.numpy()) == 6
    with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
        et.nn.functional.hardtanh(et.tensor(h), 1.0, 0.0)
    with pytest.raises(et.errors.DtypeError, match="relu6"):
        et.nn.functional.relu6(et.tensor([1, 2], dtype="int64"))


# (k, stride, padding, dilation, ceil_mode, H, W)
MAXPOOL_CONFIGS = [(2, None, 0, 1, False, 8, 8), (3, 2, 1, 1, False, 7, 9),
                   (3, 2, 0, 1, True, 8, 8), (2, 1, 0, 2, False, 6, 5),
                   ((3, 2), (2, 1), (1, 0), 1, False, 7, 6), (3, 3, 1, 1, True, 10, 11),
                   (1, 1, 0, 1, False, 3, 3), (5, 2, 2, 1, True, 9, 9)]


@pytest.mark.parametrize("cfg", MAXPOOL_CONFIGS, ids=[f"mp{i}" for i in range(len(MAXPOOL_CONFIGS))])
def test_maxpool2d(cfg):
    k, s, p, d, ceil, h, w = cfg
    tl = torch.nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)
    el = et.nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)
    # distinct values: no ties, so the argmax (and the gradient) is unique
    x = np.random.default_rng(4).permutation(2 * 3 * h * w).reshape(2, 3, h, w)
    check_layer(el, tl, (x / 10.0).astype(np.float32), BACKENDS[0])


# (k, stride, padding, ceil_mode, count_include_pad, H, W)
AVGPOOL_CONFIGS = [(2, None, 0, False, True, 8, 8), (3, 2, 1, False, True, 7, 9),
                   (3, 2, 1, False, False, 7, 9), (3, 2, 1, True, True, 8, 8),
                   (3, 2, 1, True, False, 8, 8), ((3, 2), (2, 1), (1, 0), False, True, 7, 6),
                   (2, 3, 0, True, True, 7, 7), (5, 2, 2, True, False, 6, 9)]


@pytest.mark.parametrize("cfg", AVGPOOL_CONFIGS, ids=[f"ap{i}" for i in range(len(AVGPOOL_CONFIGS))])
def test_avgpool2d(cfg):
    k, s, p, ceil, cip, h, w = cfg
    tl = torch.nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=cip)
    el = et.nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=cip)
    x = np.random.default_rng(6).standard_normal((2, 3, h, w)).astype(np.float32)
    check_layer(el, tl, x, BACKENDS[0])


@pytest.mark.parametrize("out,h,w", [(1, 7, 7), ((1, 1), 4, 5), (3, 7, 9), ((2, 3), 5, 5),
                                     ((4, None), 9, 3), (5, 5, 5)])
def test_adaptive_avgpool2d(out, h, w):
    tl = torch.nn.AdaptiveAvgPool2d(out)
    el = et.nn.AdaptiveAvgPool2d(out)
    x = np.random.default_rng(8).standard_normal((2, 3, h, w)).astype(np.float32)
    check_layer(el, tl, x, BACKENDS[0])


@pytest.mark.parametrize("start,end", [(1, -1), (0, -1), (2, 3), (1, 2)])
def test_flatten(start, end):
    x = np.random.default_rng(9).standard_normal((2, 3, 4, 5)).astype(np.float32)
    check_layer(et.nn.Flatten(start, end), torch.nn.Flatten(start, end), x, BACKENDS[0])


def test_sequential_block_all_backends():
    """A small conv net end to end (train mode) on every backend."""
    def make(nn):
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, stride=2, bias=False),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    x = np.random.default_rng(10).standard_normal((2, 3, 10, 10)).astype(np.float32)
    for b in BACKENDS:
        torch.manual_seed(0)
        check_layer(make(et.nn), make(torch.nn), x, b)


# ---------------------------------------------------------------------------
def test_dropout_identity_cases():
    x = np.random.default_rng(11).standard_normal((4, 5)).astype(np.float32)
    check_layer(et.nn.Dropout(0.0), torch.nn.Dropout(0.0), x, BACKENDS[0], train=True)
    check_layer(et.nn.Dropout(0.5), torch.nn.Dropout(0.5), x, BACKENDS[0], train=False)
    check_layer(et.nn.Dropout(1.0), torch.nn.Dropout(1.0), x, BACKENDS[0], train=True)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_mask_statistics(p):
    et.manual_seed(123)
    x = et.tensor(np.full((200, 500), 2.0, np.float32), requires_grad=True)
    y = et.nn.Dropout(p)(x)
    yv = y.detach().numpy()
    kept = yv != 0
    frac_zero = 1.0 - kept.mean()
    # 100k Bernoulli draws: std of the zero fraction <= 0.0016; allow 0.01
    assert abs(frac_zero - p) < 0.01, (frac_zero, p)
    np.testing.assert_allclose(yv[kept], 2.0 / (1.0 - p), rtol=1e-6)
    assert abs(yv.mean() - 2.0) < 0.05      # inverted dropout keeps the mean
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), kept / (1.0 - p), rtol=1e-6)
    # the mask comes from edgetrain's generator: reproducible with manual_seed
    et.manual_seed(123)
    y2 = et.nn.functional.dropout(et.tensor(np.full((200, 500), 2.0, np.float32)), p)
    np.testing.assert_array_equal(y2.numpy(), yv)


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n,c", [(1, 2), (4, 10), (7, 3)])
def test_cross_entropy(n, c, reduction):
    rng = np.random.default_rng(n * c)
    x = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    y = rng.integers(0, c, n)
    xt = torch.tensor(x, requires_grad=True)
    xe = et.tensor(x, requires_grad=True)
    lt = torch.nn.CrossEntropyLoss(reduction=reduction)(xt, torch.tensor(y))
    le = et.nn.CrossEntropyLoss(reduction=reduction)(xe, et.tensor(y, dtype="int64"))
    assert_close(le.detach().numpy(), lt.detach().numpy(), "loss")
    g = rng.standard_normal(lt.shape).astype(np.float32)
    lt.backward(torch.tensor(g))
    le.backward(et.tensor(g))
    assert_close(xe.grad.numpy(), xt.grad.numpy(), "input gradient")


def test_cross_entropy_spatial_and_ignore_index():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    y = rng.integers(0, 4, (2, 3, 3))
    y[0, 0, 0] = -100
    xt = torch.tensor(x, requires_grad=True)
    xe = et.tensor(x, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(y))
    le = et.nn.functional.cross_entropy(xe, et.tensor(y, dtype="int64"))
    assert_close(le.detach().numpy(), lt.detach().numpy(), "loss")
    lt.backward()
    le.backward()
    assert_close(xe.grad.numpy(), xt.grad.numpy(), "input gradient")


@pytest.mark.parametrize("shape,dim", [((4, 7), 1), ((4, 7), 0), ((3, 4, 5), 1),
                                       ((3, 4, 5), -1), ((6,), 0), ((2, 3, 4, 5), 1)])
def test_log_softmax(shape, dim):
    rng = np.random.default_rng(len(shape) + dim)
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    xe = et.tensor(x, requires_grad=True)
    yt = torch.log_softmax(xt, dim)
    ye = et.nn.functional.log_softmax(xe, dim)
    assert_close(ye.detach().numpy(), yt.detach().numpy(), "output")
    g = rng.standard_normal(shape).astype(np.float32)
    yt.backward(torch.tensor(g))
    ye.backward(et.tensor(g))
    assert_close(xe.grad.numpy(), xt.grad.numpy(), "input gradient")
    # softmax is exp(log_softmax)
    assert_close(et.nn.functional.softmax(et.tensor(x), dim).numpy(),
                 torch.softmax(torch.tensor(x), dim).numpy(), "softmax")


def test_nll_loss_matches():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.integers(0, 4, 5)
    lt = torch.nn.functional.nll_loss(torch.log_softmax(torch.tensor(x), 1), torch.tensor(y))
    le = et.nn.functional.nll_loss(et.nn.functional.log_softmax(et.tensor(x), 1),
                                   et.tensor(y, dtype="int64"))
    assert_close(le.numpy(), lt.numpy(), "nll_loss")


def test_layer_reprs_match_torch():
    pairs = [(et.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
              torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)),
             (et.nn.Conv2d(4, 4, 3, groups=4, dilation=2), torch.nn.Conv2d(4, 4, 3, groups=4, dilation=2)),
             (et.nn.Linear(3, 2), torch.nn.Linear(3, 2)),
             (et.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)),
             (et.nn.ReLU(), torch.nn.ReLU()), (et.nn.ReLU(inplace=True), torch.nn.ReLU(inplace=True)),
             (et.nn.ReLU6(), torch.nn.ReLU6()), (et.nn.ReLU6(inplace=True), torch.nn.ReLU6(inplace=True)),
             (et.nn.MaxPool2d(2), torch.nn.MaxPool2d(2)),
             (et.nn.AvgPool2d(3, 2, 1), torch.nn.AvgPool2d(3, 2, 1)),
             (et.nn.AdaptiveAvgPool2d((1, 1)), torch.nn.AdaptiveAvgPool2d((1, 1))),
             (et.nn.Flatten(), torch.nn.Flatten()), (et.nn.Dropout(0.3), torch.nn.Dropout(0.3)),
             (et.nn.Sequential(et.nn.Linear(2, 2), et.nn.ReLU()),
              torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))]
    for e, t in pairs:
        assert repr(e) == repr(t)
