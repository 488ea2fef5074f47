"""Precision policies (issue 3, sections 1, 4, 5 on the Python side):
et.set_precision / et.precision / et.get_precision / Module.set_precision, the
low-precision conv2d / linear autograd path vs PyTorch fp32, reproducibility of
stochastic rounding under et.manual_seed, saved-activation bytes, and a short
int8 LeNet training run."""
import contextlib
import copy
import warnings

import numpy as np
import pytest

import edgetrain as et
import edgetrain.nn as nn
from edgetrain import _C

torch = pytest.importorskip("torch")

BACKENDS = et.backends()
LOWP = ["bf16", "fp16", "int8", "int8-mixed"]
# cosine similarity floors vs torch fp32 (issue 3, section 6)
COS_MIN = {"bf16": 0.9999, "fp16": 0.9999, "int8": 0.995, "int8-mixed": 0.995}


@pytest.fixture(autouse=True)
def _restore_policy():
    prev = et.get_precision()
    et.set_precision("fp32")
    yield
    et.set_precision(prev)


def _cos(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


# ---------------------------------------------------------------------------
# policy parsing
def test_presets_resolve():
    P = ("forward", "backward_data", "backward_weight")
    want = {"fp32": ("fp32",) * 3, "bf16": ("bf16",) * 3, "fp16": ("fp16",) * 3,
            "int8": ("int8",) * 3, "int8-mixed": ("int8", "int8", "bf16")}
    for name, t in want.items():
        et.set_precision(name)
        assert et.get_precision() == dict(zip(P, t)), name
    d = {"forward": "int8", "backward_data": "fp16", "backward_weight": "bfloat16"}
    et.set_precision(d)
    assert et.get_precision() == {"forward": "int8", "backward_data": "fp16",
                                  "backward_weight": "bf16"}
    # get_precision returns a copy
    et.get_precision()["forward"] = "fp32"
    assert et.get_precision()["forward"] == "int8"


def test_policy_errors():
    with pytest.raises(ValueError, match="unknown policy 'int4'"):
        et.set_precision("int4")
    with pytest.raises(ValueError, match="missing key.*'backward_weight'"):
        et.set_precision({"forward": "int8", "backward_data": "int8"})
    with pytest.raises(ValueError, match="unknown key.*'fwd'"):
        et.set_precision({"forward": "int8", "backward_data": "int8",
                          "backward_weight": "int8", "fwd": "int8"})
    with pytest.raises(ValueError, match="bad value 'int4' for 'backward_data'"):
        et.set_precision({"forward": "int8", "backward_data": "int4",
                          "backward_weight": "int8"})
    with pytest.raises(TypeError, match="str or a dict"):
        et.set_precision(8)
    with pytest.raises(ValueError):
        et.precision("int16")
    with pytest.raises(ValueError):
        nn.Linear(2, 2).set_precision("fp8")
    # a failed call changes nothing
    assert et.get_precision()["forward"] == "fp32"


def test_context_restores():
    et.set_precision("bf16")
    with et.precision("int8") as d:
        assert d["forward"] == "int8" and et.get_precision()["forward"] == "int8"
        with et.precision("fp16"):
            assert et.get_precision()["forward"] == "fp16"
        assert et.get_precision()["forward"] == "int8"
    assert et.get_precision()["forward"] == "bf16"
    with pytest.raises(KeyError):
        with et.precision("int8-mixed"):
            raise KeyError("boom")
    assert et.get_precision()["backward_weight"] == "bf16"
    assert et.get_precision()["forward"] == "bf16"

    @et.precision("fp16")
    def f():
        return et.get_precision()["forward"]
    assert f() == "fp16" and et.get_precision()["forward"] == "bf16"


def _record_policies(monkeypatch):
    """Records the forward precision each conv2d / linear call runs at."""
    seen = []
    for name in ("conv2d_forward_lowp", "linear_forward_lowp"):
        orig = getattr(_C, name)

        def wrap(*a, _o=orig, _n=name, **k):
            seen.append((_n.split("_")[0], k.get("precision")))
            return _o(*a, **k)
        monkeypatch.setattr(_C, name, wrap)
    for name in ("conv2d_forward", "linear_forward"):
        orig = getattr(_C, name)

        def wrap(*a, _o=orig, _n=name, **k):
            seen.append((_n.split("_")[0], "fp32"))
            return _o(*a, **k)
        monkeypatch.setattr(_C, name, wrap)
    return seen


def test_module_set_precision_subtree(monkeypatch):
    et.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    model = nn.Sequential(inner, nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = et.randn(2, 2, 6, 6)
    seen = _record_policies(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # backend fallbacks
        model(x)
        assert seen == [("conv2d", "fp32"), ("linear", "fp32")]
        seen.clear()
        inner.set_precision("int8")
        model(x)
        assert seen == [("conv2d", "int8"), ("linear", "fp32")]
        seen.clear()
        with et.precision("bf16"):      # the layer's own policy wins over the context
            model(x)
        assert seen == [("conv2d", "int8"), ("linear", "bf16")]
        seen.clear()
        et.set_precision("fp16")
        model(x)
        assert seen == [("conv2d", "int8"), ("linear", "fp16")]
        seen.clear()
        model.set_precision({"forward": "bf16", "backward_data": "int8",
                             "backward_weight": "fp32"})   # whole tree, inner too
        model(x)
        assert seen == [("conv2d", "bf16"), ("linear", "bf16")]
        seen.clear()
        m2 = copy.deepcopy(model)                           # copies keep their policy
        model.set_precision(None)                           # back to the global default
        model(x)
        assert seen == [("conv2d", "fp16"), ("linear", "fp16")]
        seen.clear()
        m2(x)
        assert seen == [("conv2d", "bf16"), ("linear", "bf16")]
    assert model.set_precision("int8") is model


# ---------------------------------------------------------------------------
# fp32 policy == the fp32 path
@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_policy_identical(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    dy = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    y0 = _C.conv2d_forward(x, w, b, (2, 2), (1, 1), (1, 1), 1, backend=backend)
    g0 = _C.conv2d_backward(dy, x, w, (2, 2), (1, 1), (1, 1), 1, True, True, True,
                            backend=backend)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    conv.weight.data = et.tensor(w)
    conv.bias.data = et.tensor(b)
    for scope in ("default", "context", "module"):
        conv.set_precision("fp32" if scope == "module" else None)
        xt = et.tensor(x, requires_grad=True)
        ctx = et.precision("fp32") if scope == "context" else contextlib.nullcontext()
        with et.backend(backend), ctx:
            y = conv(xt)
            y.backward(et.tensor(dy))
        assert np.array_equal(y.detach().numpy(), y0), scope
        assert np.array_equal(xt.grad.numpy(), g0[0]), scope
        assert np.array_equal(conv.weight.grad.numpy(), g0[1]), scope
        assert np.array_equal(conv.bias.grad.numpy(), g0[2]), scope
        conv.zero_grad()
    xl = rng.standard_normal((5, 7)).astype(np.float32)
    wl = rng.standard_normal((3, 7)).astype(np.float32)
    dyl = rng.standard_normal((5, 3)).astype(np.float32)
    yl0 = _C.linear_forward(xl, wl, None, backend=backend)
    gl0 = _C.linear_backward(dyl, xl, wl, True, True, False, backend=backend)
    lin = nn.Linear(7, 3, bias=False)
    lin.weight.data = et.tensor(wl)
    xt = et.tensor(xl, requires_grad=True)
    with et.backend(backend):
        y = lin(xt)
        y.backward(et.tensor(dyl))
    assert np.array_equal(y.detach().numpy(), yl0)
    assert np.array_equal(xt.grad.numpy(), gl0[0])
    assert np.array_equal(lin.weight.grad.numpy(), gl0[1])


# ---------------------------------------------------------------------------
# per layer vs torch fp32, through the public nn API
CONV_CASES = [  # (N, C, H, W), OC, kernel, stride, padding, dilation, groups
    ((2, 3, 10, 10), 8, 3, 1, 1, 1, 1),
    ((2, 4, 9, 9), 6, 3, 2, 1, 1, 2),
    ((1, 5, 12, 11), 4, (3, 2), 1, (2, 0), 2, 1),
]
LIN_CASES = [((5, 20), 7), ((16, 64), 32), ((3, 4, 10), 6)]


def _run_conv(case, backend, pol, seed=0):
    shape, oc, k, s, p, d, g = case
    rng = np.random.default_rng(seed)
    et.manual_seed(seed)
    layer = nn.Conv2d(shape[1], oc, k, stride=s, padding=p, dilation=d, groups=g)
    ref = torch.nn.Conv2d(shape[1], oc, k, stride=s, padding=p, dilation=d, groups=g)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.weight.detach().numpy()))
        ref.bias.copy_(torch.from_numpy(layer.bias.detach().numpy()))
    x = rng.standard_normal(shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    yt = ref(xt)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    xe = et.tensor(x, requires_grad=True)
    layer.set_precision(pol)
    with et.backend(backend):
        ye = layer(xe)
        ye.backward(et.tensor(dy))
    return ((ye.detach().numpy(), yt.detach().numpy()), (xe.grad.numpy(), xt.grad.numpy()),
            (layer.weight.grad.numpy(), ref.weight.grad.numpy()),
            (layer.bias.grad.numpy(), ref.bias.grad.numpy()))


def _run_linear(case, backend, pol, seed=0):
    shape, out_f = case
    rng = np.random.default_rng(seed)
    et.manual_seed(seed)
    layer = nn.Linear(shape[-1], out_f)
    ref = torch.nn.Linear(shape[-1], out_f)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.weight.detach().numpy()))
        ref.bias.copy_(torch.from_numpy(layer.bias.detach().numpy()))
    x = rng.standard_normal(shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    yt = ref(xt)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    xe = et.tensor(x, requires_grad=True)
    layer.set_precision(pol)
    with et.backend(backend):
        ye = layer(xe)
        ye.backward(et.tensor(dy))
    return ((ye.detach().numpy(), yt.detach().numpy()), (xe.grad.numpy(), xt.grad.numpy()),
            (layer.weight.grad.numpy(), ref.weight.grad.numpy()),
            (layer.bias.grad.numpy(), ref.bias.grad.numpy()))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")    # backend -> ref fallbacks
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pol", LOWP)
def test_layers_vs_torch(backend, pol):
    """cos(y), cos(dx), cos(dw) >= 0.9999 (bf16/fp16), >= 0.995 (int8, int8-mixed);
    db is an f32 sum in every precision: rtol 1e-4."""
    for kind, cases, run in (("conv", CONV_CASES, _run_conv),
                             ("linear", LIN_CASES, _run_linear)):
        for case in cases:
            y, dx, dw, db = run(case, backend, pol)
            for name, (a, b) in (("y", y), ("dx", dx), ("dw", dw)):
                assert a.shape == b.shape, (kind, case, name)
                c = _cos(a, b)
                assert c >= COS_MIN[pol], f"{kind} {case} {pol} {backend}: cos({name})={c}"
            np.testing.assert_allclose(db[0], db[1], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# reproducibility of stochastic rounding
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_int8_reproducible_under_manual_seed():
    case = CONV_CASES[0]
    a = _run_conv(case, "ref", "int8", seed=3)
    b = _run_conv(case, "ref", "int8", seed=3)
    for (ua, _), (ub, _) in zip(a, b):
        assert np.array_equal(ua, ub)
    # the stochastic rounding seed comes from et's generator: another et seed,
    # same data and weights -> other dy roundings -> other dx / dw
    rng = np.random.default_rng(4)
    layer = nn.Conv2d(3, 8, 3, padding=1)
    layer.set_precision("int8")
    x = rng.standard_normal((2, 3, 10, 10)).astype(np.float32)
    dy = et.tensor(rng.standard_normal((2, 8, 10, 10)).astype(np.float32))
    grads = []
    for s in (11, 11, 12):
        et.manual_seed(s)
        xe = et.tensor(x, requires_grad=True)
        layer(xe).backward(dy)
        grads.append((xe.grad.numpy().copy(), layer.weight.grad.numpy().copy()))
        layer.zero_grad()
    assert np.array_equal(grads[0][0], grads[1][0])
    assert np.array_equal(grads[0][1], grads[1][1])
    assert not np.array_equal(grads[0][1], grads[2][1])


# ---------------------------------------------------------------------------
# saved activation bytes
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_saved_activation_bytes():
    base = et.saved_activation_bytes()
    assert et.precision.saved_bytes() == base
    conv = nn.Conv2d(8, 16, 3, padding=1)
    lin = nn.Linear(256, 10)
    x = et.randn(8, 8, 16, 16)
    xl = et.randn(32, 256)
    got = {}
    for pol in ("fp32", "bf16", "fp16", "int8", "int8-mixed"):
        with et.precision(pol):
            y = conv(x)
            yl = lin(xl)
        got[pol] = et.saved_activation_bytes() - base
        y.sum().backward()
        yl.sum().backward()
        assert et.saved_activation_bytes() == base, pol   # released after backward
    fp32 = x.numel() * 4 + xl.numel() * 4
    # kept at the forward's precision: fp32 4 bytes, bf16 / fp16 2, int8 1 (+ scales)
    assert got["fp32"] == fp32 and got["bf16"] == got["fp16"] == fp32 // 2
    for pol in ("int8", "int8-mixed"):
        assert got[pol] <= fp32 / 4 + 64, (pol, got[pol], fp32)
    # nothing saved without grad; a dropped graph releases its bytes
    with et.no_grad(), et.precision("int8"):
        conv(x)
    assert et.saved_activation_bytes() == base
    with et.precision("int8"):
        y = conv(x)
    assert et.saved_activation_bytes() > base
    del y
    assert et.saved_activation_bytes() == base


def test_fallback_warning_surfaces():
    """An int8 conv on a backend without it warns (RuntimeWarning) once."""
    fallback = [b for b in BACKENDS if not _C.backend_supports(b, "conv2d", "int8")]
    if not fallback:
        pytest.skip("every backend runs int8 conv2d itself: nothing falls back")
    _C.reset_fallback_stats()
    conv = nn.Conv2d(2, 3, 3)
    with et.backend(fallback[0]), et.precision("int8"):
        with pytest.warns(RuntimeWarning, match="conv2d"):
            conv(et.randn(1, 2, 5, 5))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            conv(et.randn(1, 2, 5, 5))                     # once only


# ---------------------------------------------------------------------------
# a short int8 training run
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("pol", ["int8", "int8-mixed"])
def test_lenet_int8_training_decreases_loss(pol):
    et.manual_seed(0)
    model = et.models.lenet()
    model.set_precision(pol)
    opt = et.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    x = et.tensor(rng.standard_normal((32, 1, 28, 28)).astype(np.float32))
    t = et.tensor(rng.integers(0, 10, 32))
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    assert np.isfinite(losses).all(), losses
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.dtype == "float32" for p in model.parameters())   # fp32 master weights
