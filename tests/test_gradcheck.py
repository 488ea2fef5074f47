"""et.autograd.gradcheck on every differentiable op (issue 6, item 3).

Each case below runs gradcheck (edgetrain/gradcheck.py: the analytical
Jacobian from backward() with one-hot grad_outputs against central
differences) on small random inputs:

* float64 wherever the op accepts it (the NumPy ops of edgetrain.tensor),
  with torch's tolerances (eps 1e-6, atol 1e-5, rtol 1e-3);
* float32 where the op runs a float32-only C kernel (conv2d, linear, relu,
  pooling, batch_norm, log_softmax, nll_loss, 2-D float32 matmul on a
  backend), with FP32_DEFAULTS (eps 1e-2 relative, atol = rtol = 1e-3; the
  module docstring of edgetrain/gradcheck.py says why);
* conv2d / linear / 2-D matmul on each backend (ref, blas, onednn), conv2d
  with random stride / padding / groups / dilation / kernel / shape.

Inputs of ops with kinks (relu, clamp, hardtanh, abs, max and max-pool ties)
are kept a few steps away from them, so the finite difference never straddles
a kink.

Completeness is enforced, so a new op without a case makes a test fail:
* every edgetrain `Function` subclass must appear in some case's graph
  (found by walking grad_fn from the case's outputs), and
* every public name of edgetrain.nn.functional, every public Tensor method /
  operator, every nn layer and every differentiable edgetrain.* function must
  be listed by a case's `covers` or in an exclusion table with its reason.

The mutation tests at the end show the check can fail: a backward off by 1%
(or transposed) is caught, in float64 and in float32 (conv2d on every backend).
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import edgetrain as et
import edgetrain.nn.functional as F
from edgetrain.autograd import Function
from edgetrain.errors import GradcheckError
from edgetrain.gradcheck import FP32_DEFAULTS, FP64_DEFAULTS

gradcheck = et.autograd.gradcheck
BACKENDS = ["ref", "blas", "onednn"]


# ---------------------------------------------------------------------------
# input helpers
def _rng(seed):
    return np.random.default_rng(seed)


def t64(a):
    return et.tensor(np.asarray(a, np.float64), dtype="float64", requires_grad=True)


def t32(a):
    return et.tensor(np.asarray(a, np.float32), dtype="float32", requires_grad=True)


def randn(seed, *shape, dtype="float64", scale=1.0):
    a = _rng(seed).standard_normal(shape) * scale
    return t64(a) if dtype == "float64" else t32(a)


def away(a, points=(0.0,), margin=0.2):
    """a with every value at least `margin` from each kink in `points`."""
    a = np.array(a, dtype=np.float64)
    for p in points:
        near = np.abs(a - p) < margin
        a[near] = p + np.where(a[near] >= p, margin, -margin)
    return a


def distinct(seed, *shape, lo=-2.0, hi=2.0):
    """Values in [lo, hi] spaced by (hi - lo) / n: no two within a few
    finite-difference steps (max / max-pool ties)."""
    n = int(np.prod(shape))
    return (_rng(seed).permutation(n) * ((hi - lo) / n) + lo).reshape(shape)


def positive(seed, *shape, lo=0.5, hi=2.0):
    return _rng(seed).uniform(lo, hi, shape)


# ---------------------------------------------------------------------------
# cases: name -> (make() -> (fn, inputs, gradcheck kwargs), covers)
CASES = {}


def case(name, covers=(), backend=None):
    def deco(make):
        CASES[name] = (make, tuple(covers), backend)
        return make
    return deco


# -- arithmetic (float64) --------------------------------------------------------
@case("add_broadcast", ["Tensor.__add__", "Tensor.__radd__", "Tensor.add"])
def _():
    a, b = randn(1, 2, 3), randn(2, 3)
    return (lambda a, b: (a + b, 2.0 + a, a.add(b, alpha=2.0))), (a, b), {}


@case("sub_broadcast", ["Tensor.__sub__", "Tensor.__rsub__", "Tensor.sub"])
def _():
    a, b = randn(3, 2, 1), randn(4, 1, 4)
    return (lambda a, b: (a - b, 1.0 - a, a.sub(b, alpha=0.5))), (a, b), {}


@case("mul_broadcast", ["Tensor.__mul__", "Tensor.__rmul__", "Tensor.mul"])
def _():
    a, b = randn(5, 2, 3), randn(6, 1, 3)
    return (lambda a, b: (a * b, 3.0 * a, a.mul(b))), (a, b), {}


@case("div", ["Tensor.__truediv__", "Tensor.__rtruediv__", "Tensor.div"])
def _():
    a = randn(7, 2, 3)
    b = t64(away(_rng(8).standard_normal((3,)), margin=0.5))
    return (lambda a, b: (a / b, 2.0 / b, a.div(2.5))), (a, b), {}


@case("pow", ["Tensor.__pow__", "Tensor.__rpow__", "Tensor.pow"])
def _():
    a, b = t64(positive(9, 2, 3)), randn(10, 3, scale=0.5)
    return (lambda a, b: (a ** b, a ** 3, 2.0 ** b, a.pow(2.5))), (a, b), {}


@case("neg_pos", ["Tensor.__neg__", "Tensor.neg", "Tensor.__pos__"])
def _():
    return (lambda a: (-a, a.neg(), +a * 1.5)), (randn(11, 4),), {}


@case("inplace_operators", ["Tensor.__iadd__", "Tensor.__isub__", "Tensor.__imul__",
                            "Tensor.__itruediv__"])
def _():
    def fn(a, b):
        y = a * 1.0          # a non-leaf: += records an Add, as torch's would
        y += b
        y -= 0.5 * b
        y *= b
        y /= 2.0
        return y
    return fn, (randn(12, 3), randn(13, 3)), {}


# -- elementwise functions -------------------------------------------------------
@case("exp_log_sqrt", ["Tensor.exp", "Tensor.log", "Tensor.sqrt", "et.exp", "et.log",
                       "et.sqrt"])
def _():
    a = t64(positive(14, 2, 3))
    return (lambda a: (a.exp(), a.log(), a.sqrt(), et.exp(a) * et.log(a) + et.sqrt(a))), \
        (a,), {}


@case("tanh_sigmoid", ["Tensor.tanh", "Tensor.sigmoid", "et.tanh", "et.sigmoid"])
def _():
    a = randn(15, 3, 4, scale=2.0)
    return (lambda a: (a.tanh(), a.sigmoid(), et.tanh(a) + et.sigmoid(a))), (a,), {}


@case("abs", ["Tensor.abs", "Tensor.__abs__", "et.abs"])
def _():
    a = t64(away(_rng(16).standard_normal((3, 4))))
    return (lambda a: (a.abs(), abs(a), et.abs(a))), (a,), {}


@case("clamp", ["Tensor.clamp", "Tensor.clip", "et.clamp", "et.clip"])
def _():
    a = t64(away(_rng(17).standard_normal((4, 5)) * 2, points=(-1.0, 0.5)))
    return (lambda a: (a.clamp(-1.0, 0.5), a.clip(min=-1.0), a.clamp(max=0.5),
                       et.clamp(a, -1.0, 0.5), et.clip(a, -1.0))), (a,), {}


@case("relu_f32", ["Tensor.relu", "et.relu", "F.relu", "F.relu_", "nn.ReLU"])
def _():
    a = t32(away(_rng(18).standard_normal((3, 5))))
    return (lambda a: (a.relu(), et.relu(a), F.relu(a), F.relu_(a), et.nn.ReLU()(a))), \
        (a,), {}


@case("hardtanh_relu6_f32", ["F.hardtanh", "F.relu6", "nn.ReLU6"])
def _():
    a = t32(away(_rng(19).uniform(-3, 8, (4, 6)), points=(-1.5, 2.0, 0.0, 6.0)))
    return (lambda a: (F.hardtanh(a, -1.5, 2.0), F.relu6(a), et.nn.ReLU6()(a))), (a,), {}


@case("maximum_minimum_where", ["et.maximum", "et.minimum", "et.where", "Tensor.max",
                                "Tensor.min"])
def _():
    a, b = randn(20, 3, 4), randn(21, 3, 4)
    b._data[np.abs(a._data - b._data) < 0.1] += 0.3        # no ties within a step
    cond = et.tensor(_rng(22).random((3, 4)) > 0.5, dtype="bool")
    return (lambda a, b: (et.maximum(a, b), et.minimum(a, b), a.max(b), a.min(b),
                          et.where(cond, a, b))), (a, b), {}


# -- reductions --------------------------------------------------------------------
@case("sum_mean", ["Tensor.sum", "Tensor.mean", "et.sum", "et.mean"])
def _():
    a = randn(23, 2, 3, 4)
    return (lambda a: (a.sum(), a.sum(1), a.sum((0, 2), keepdim=True), a.mean(),
                       a.mean(-1), a.mean((1, 2), keepdim=True), et.sum(a, 0),
                       et.mean(a, 1))), (a,), {}


@case("max_min_reduce", ["Tensor.max", "Tensor.min", "et.max", "et.min"])
def _():
    a = t64(distinct(24, 3, 4, 5))
    return (lambda a: (a.max(), a.min(), a.max(1).values, a.min(dim=2, keepdim=True)[0],
                       et.max(a, 0).values, et.min(a))), (a,), {}


@case("var_std", ["Tensor.var", "Tensor.std", "et.var", "et.std"])
def _():
    a = randn(25, 3, 5)
    return (lambda a: (a.var(), a.var(1, unbiased=False), a.std(0, keepdim=True),
                       a.std(correction=0), et.var(a, 1), et.std(a))), (a,), {}


# -- shapes and indexing ---------------------------------------------------------
@case("reshape_family", ["Tensor.reshape", "Tensor.view", "Tensor.view_as",
                         "Tensor.reshape_as", "Tensor.flatten", "Tensor.unflatten",
                         "Tensor.squeeze", "Tensor.unsqueeze", "et.reshape", "et.flatten",
                         "et.squeeze", "et.unsqueeze", "F.flatten", "nn.Flatten",
                         "nn.Unflatten"])
def _():
    a, like = randn(26, 2, 1, 6), et.zeros(3, 4)
    return (lambda a: (a.reshape(3, 4) * 2, a.view(-1, 2), a.view_as(like), a.reshape_as(like),
                       a.flatten(), a.unflatten(2, (2, 3)), a.squeeze(), a.squeeze(1),
                       a.unsqueeze(0), et.reshape(a, (12,)), et.flatten(a, 1),
                       et.squeeze(a, 1), et.unsqueeze(a, -1), F.flatten(a, 0, 1),
                       et.nn.Flatten()(a), et.nn.Unflatten(2, (3, 2))(a))), (a,), {}


@case("permute_family", ["Tensor.permute", "Tensor.transpose", "Tensor.t", "Tensor.T",
                         "et.permute", "et.transpose"])
def _():
    a, m = randn(27, 2, 3, 4), randn(28, 3, 5)
    return (lambda a, m: (a.permute(2, 0, 1), a.transpose(0, 2), m.t(), m.T, a.T,
                          et.permute(a, (1, 2, 0)), et.transpose(a, 1, 2))), (a, m), {}


@case("expand", ["Tensor.expand", "Tensor.expand_as"])
def _():
    a, like = randn(29, 3, 1), et.zeros(2, 3, 4)
    return (lambda a: (a.expand(3, 4), a.expand(2, -1, 5), a.expand_as(like))), (a,), {}


@case("getitem_split", ["Tensor.__getitem__", "Tensor.chunk", "Tensor.split",
                        "Tensor.__iter__"])
def _():
    a = randn(30, 4, 5)
    idx = et.tensor([0, 2, 2, 3], dtype="int64")
    mask = et.tensor(_rng(31).random((4, 5)) > 0.4, dtype="bool")
    return (lambda a: (a[1], a[1:3, ::2], a[..., -1], a[[0, 2, 2]], a[idx], a[:, [1, 1, 4]],
                       a[mask], *a.chunk(2, 1), *a.split([1, 3]), *list(a))), (a,), {}


@case("cat_stack", ["et.cat", "et.concat", "et.stack"])
def _():
    a, b = randn(32, 2, 3), randn(33, 2, 1)
    return (lambda a, b: (et.cat([a, b], 1), et.concat([b, b, a], dim=-1),
                          et.stack([a, a * 2.0], 1))), (a, b), {}


@case("pad", ["F.pad"])
def _():
    a = randn(34, 2, 3, 4, dtype="float32")
    return (lambda a: (F.pad(a, (1, 2)), F.pad(a, (0, 1, 2, 0), value=0.5))), (a,), {}


# -- dtype conversions -----------------------------------------------------------
@case("casts", ["Tensor.to", "Tensor.double", "Tensor.float", "Tensor.type", "Tensor.clone",
                "Tensor.contiguous", "Tensor.half"])
def _():
    # eps 0.25 on multiples of 1/8 in [-1, 1]: x, x +- h and every product are
    # exact in float16, float32 and float64, so the fp16 round trip is exact too
    a = t64(np.round(_rng(35).uniform(-1, 1, (2, 3)) * 8) / 8)
    return (lambda a: (a.to("float32").double() * 3, a.float().to(a) * 2, a.type("float32"),
                       a.half().double(), a.clone(), a.transpose(0, 1).contiguous())), \
        (a,), {"eps": 0.25}


# -- matmul ---------------------------------------------------------------------
@case("matmul_f64_nd", ["Tensor.matmul", "Tensor.mm", "Tensor.__matmul__",
                        "Tensor.__rmatmul__", "et.matmul"])
def _():
    a, b = randn(36, 3, 4), randn(37, 4, 2)
    c, v = randn(38, 2, 3, 4), randn(39, 4)
    return (lambda a, b, c, v: (a @ b, a.matmul(b), a.mm(b), c @ b, v @ b, a @ v, v @ v,
                                np.ones((2, 3)) @ a, et.matmul(c, v))), (a, b, c, v), {}


for _be in BACKENDS:
    @case(f"matmul2d_f32[{_be}]", ["Tensor.matmul", "Tensor.__matmul__"], backend=_be)
    def _():
        a, b = randn(40, 3, 5, dtype="float32"), randn(41, 5, 4, dtype="float32")
        return (lambda a, b: (a @ b, b.t() @ a.t())), (a, b), {}


# -- conv2d / linear on every backend, random configurations ------------------------
def _conv_config(seed):
    """A random valid conv2d: groups, stride, padding, dilation, kernel, shape."""
    r = _rng(1000 + seed)
    while True:
        g = int(r.integers(1, 4))
        cg, ocg = int(r.integers(1, 3)), int(r.integers(1, 3))
        kh, kw = int(r.integers(1, 4)), int(r.integers(1, 4))
        s = (int(r.integers(1, 3)), int(r.integers(1, 3)))
        d = (int(r.integers(1, 3)), int(r.integers(1, 3)))
        p = (int(r.integers(0, 3)), int(r.integers(0, 3)))
        h, w = int(r.integers(3, 7)), int(r.integers(3, 7))
        n = int(r.integers(1, 3))
        if h + 2 * p[0] >= d[0] * (kh - 1) + 1 and w + 2 * p[1] >= d[1] * (kw - 1) + 1:
            return dict(n=n, c=g * cg, oc=g * ocg, k=(kh, kw), stride=s, padding=p,
                        dilation=d, groups=g, hw=(h, w), bias=bool(r.integers(0, 2)) or seed == 0)


N_CONV_CONFIGS = 4
for _be in BACKENDS:
    for _i in range(N_CONV_CONFIGS):
        @case(f"conv2d_random{_i}[{_be}]", ["F.conv2d"], backend=_be)
        def _(i=_i):
            cf = _conv_config(i)
            x = randn(50 + i, cf["n"], cf["c"], *cf["hw"], dtype="float32")
            w = randn(60 + i, cf["oc"], cf["c"] // cf["groups"], *cf["k"], dtype="float32",
                      scale=0.5)
            args = (x, w) + ((randn(70 + i, cf["oc"], dtype="float32"),) if cf["bias"] else ())
            return (lambda x, w, b=None: F.conv2d(x, w, b, cf["stride"], cf["padding"],
                                                  cf["dilation"], cf["groups"])), args, {}

    @case(f"conv2d_same_unbatched[{_be}]", ["F.conv2d"], backend=_be)
    def _():
        # 'same' with an even dilated kernel: PyTorch's asymmetric padding (F.pad
        # inside); a (C, H, W) input; no bias
        x, w = randn(80, 2, 5, 4, dtype="float32"), randn(81, 3, 2, 2, 3, dtype="float32")
        return (lambda x, w: F.conv2d(x, w, padding="same", dilation=(1, 2))), (x, w), {}

    @case(f"linear[{_be}]", ["F.linear"], backend=_be)
    def _():
        x, w, b = (randn(82, 4, 5, dtype="float32"), randn(83, 3, 5, dtype="float32"),
                   randn(84, 3, dtype="float32"))
        x3 = randn(85, 2, 2, 5, dtype="float32")
        return (lambda x, w, b, x3: (F.linear(x, w, b), F.linear(x3, w))), (x, w, b, x3), {}


# -- pooling -------------------------------------------------------------------------
@case("max_pool2d", ["F.max_pool2d", "nn.MaxPool2d"])
def _():
    x = t32(distinct(90, 2, 2, 5, 6))
    return (lambda x: (F.max_pool2d(x, 2), F.max_pool2d(x, 3, 2, 1),
                       F.max_pool2d(x, (2, 3), (1, 2), dilation=(2, 1), ceil_mode=True),
                       F.max_pool2d(x, 2, return_indices=True)[0],
                       F.max_pool2d(x[0], 2, 1),
                       et.nn.MaxPool2d(3, 1, 1)(x))), (x,), {}


@case("avg_pool2d", ["F.avg_pool2d", "nn.AvgPool2d"])
def _():
    x = randn(91, 2, 3, 5, 6, dtype="float32")
    return (lambda x: (F.avg_pool2d(x, 2), F.avg_pool2d(x, 3, 2, 1),
                       F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                       F.avg_pool2d(x, (2, 3), 2, ceil_mode=True), et.nn.AvgPool2d(2, 1)(x))), \
        (x,), {}


@case("adaptive_avg_pool2d", ["F.adaptive_avg_pool2d", "nn.AdaptiveAvgPool2d"])
def _():
    x = randn(92, 2, 3, 5, 7, dtype="float32")
    return (lambda x: (F.adaptive_avg_pool2d(x, (3, 2)), F.adaptive_avg_pool2d(x, 1),
                       F.adaptive_avg_pool2d(x, (None, 4)), et.nn.AdaptiveAvgPool2d(2)(x[0]))), \
        (x,), {}


# -- batch norm -----------------------------------------------------------------------
@case("batch_norm_train", ["F.batch_norm"])
def _():
    x = randn(93, 4, 3, 2, 3, dtype="float32")
    w, b = t32(positive(94, 3)), randn(95, 3, dtype="float32")
    x2 = randn(96, 5, 3, dtype="float32")

    def fn(x, w, b, x2):
        rm, rv = et.zeros(3), et.ones(3)
        return (F.batch_norm(x, rm, rv, w, b, training=True),
                F.batch_norm(x, None, None, training=True),
                F.batch_norm(x2, rm, rv, w, b, training=True, momentum=None))
    return fn, (x, w, b, x2), {}


@case("batch_norm_eval", ["F.batch_norm"])
def _():
    x = randn(97, 2, 3, 2, 2, dtype="float32")
    w, b = t32(positive(98, 3)), randn(99, 3, dtype="float32")
    rm, rv = et.tensor(_rng(100).standard_normal(3)), et.tensor(positive(101, 3))
    return (lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3)), \
        (x, w, b), {}


# -- dropout ---------------------------------------------------------------------------
@case("dropout", ["F.dropout", "nn.Dropout"])
def _():
    x = randn(102, 4, 5)

    def fn(x):
        et.manual_seed(7)           # the same mask for every evaluation
        y1 = F.dropout(x, 0.3)
        y2 = et.nn.Dropout(0.5)(x.float())
        return y1, y2, F.dropout(x, 0.4, training=False)
    return fn, (x,), {}


# -- softmax and losses ------------------------------------------------------------------
@case("log_softmax_softmax", ["F.log_softmax", "F.softmax", "nn.Softmax", "nn.LogSoftmax"])
def _():
    x = randn(103, 3, 4, dtype="float32")
    x3 = randn(104, 2, 3, 2, dtype="float32")
    return (lambda x, x3: (F.log_softmax(x, 1), F.softmax(x, dim=0), F.log_softmax(x3, 1),
                           F.softmax(x3, -1), et.nn.Softmax(1)(x), et.nn.LogSoftmax(0)(x))), \
        (x, x3), {}


@case("nll_cross_entropy", ["F.nll_loss", "F.cross_entropy", "nn.CrossEntropyLoss",
                            "nn.NLLLoss"])
def _():
    x = randn(105, 5, 4, dtype="float32")
    x4 = randn(106, 2, 3, 2, 2, dtype="float32")
    y = et.tensor([0, 3, 1, 1, 2], dtype="int64")
    yi = et.tensor([0, -100, 1, 3, -100], dtype="int64")
    y4 = et.tensor(_rng(107).integers(0, 3, (2, 2, 2)), dtype="int64")
    soft = et.tensor(_rng(108).dirichlet(np.ones(4), 5))

    def fn(x, x4):
        lp = F.log_softmax(x, 1)
        return (F.nll_loss(lp, y), F.nll_loss(lp, y, reduction="sum"),
                F.nll_loss(lp, y, reduction="none"), F.nll_loss(lp, yi),
                F.cross_entropy(x, y), F.cross_entropy(x, yi, reduction="sum"),
                F.cross_entropy(x4, y4), F.cross_entropy(x, soft),
                F.cross_entropy(x[0], y[1]),
                et.nn.CrossEntropyLoss(reduction="none")(x, y), et.nn.NLLLoss()(lp, y))
    return fn, (x, x4), {}


@case("mse_loss", ["F.mse_loss", "nn.MSELoss"])
def _():
    a, b = randn(109, 3, 4), randn(110, 3, 4)
    return (lambda a, b: (F.mse_loss(a, b), F.mse_loss(a, b, reduction="sum"),
                          F.mse_loss(a, b, reduction="none"), et.nn.MSELoss()(a, b))), \
        (a, b), {}


# -- layers (parameters checked too) ----------------------------------------------------
def _module_case(module, x):
    params = tuple(module.parameters())
    return (lambda x, *p: module(x)), (x,) + params, {}


for _be in BACKENDS:
    @case(f"nn.Conv2d[{_be}]", ["nn.Conv2d"], backend=_be)
    def _():
        et.manual_seed(111)
        return _module_case(et.nn.Conv2d(4, 2, 3, stride=2, padding=1, groups=2),
                            randn(112, 1, 4, 5, 5, dtype="float32"))

    @case(f"nn.Linear[{_be}]", ["nn.Linear"], backend=_be)
    def _():
        et.manual_seed(113)
        return _module_case(et.nn.Linear(4, 3), randn(114, 2, 4, dtype="float32"))


@case("nn.BatchNorm", ["nn.BatchNorm2d", "nn.BatchNorm1d"])
def _():
    bn2, bn1 = et.nn.BatchNorm2d(2), et.nn.BatchNorm1d(3)
    bn2.weight.data = et.tensor(positive(115, 2))
    x, x1 = randn(116, 3, 2, 2, 2, dtype="float32"), randn(117, 4, 3, dtype="float32")
    return (lambda x, x1, *p: (bn2(x), bn1(x1))), \
        (x, x1) + tuple(bn2.parameters()) + tuple(bn1.parameters()), {}


@case("nn.Sequential_Identity", ["nn.Sequential", "nn.Identity", "nn.ModuleList",
                                 "nn.ModuleDict"])
def _():
    et.manual_seed(118)
    body = et.nn.ModuleList([et.nn.Linear(3, 4), et.nn.Identity()])
    head = et.nn.ModuleDict({"out": et.nn.Linear(4, 2)})
    seq = et.nn.Sequential(body[0], body[1], et.nn.Sequential(head["out"]))
    return _module_case(seq, randn(119, 2, 3, dtype="float32"))


# ---------------------------------------------------------------------------
# running the cases
def _run_case(name):
    make, _, backend = CASES[name]
    with et.backend(backend or et.get_backend()):
        fn, inputs, kw = make()
        return gradcheck(fn, inputs, **kw)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck(name):
    backend = CASES[name][2]
    if backend is not None and backend not in et.backends():
        pytest.skip(f"backend {backend!r} is not built here (et.backends() = {et.backends()})")
    assert _run_case(name) is True


# ---------------------------------------------------------------------------
# completeness: a new op without a case fails here
def _graph_nodes(outputs):
    """Types of every Function node reachable from the outputs' grad_fn."""
    seen, types, stack = set(), set(), [o.grad_fn for o in outputs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        types.add(type(node))
        stack.extend(t.grad_fn for t in node.inputs if t is not None and t.grad_fn is not None)
    return types


def _all_subclasses(cls):
    for s in cls.__subclasses__():
        yield s
        yield from _all_subclasses(s)


def test_every_function_subclass_has_a_case():
    covered = set()
    for name, (make, _, backend) in CASES.items():
        if backend is not None and backend not in et.backends():
            continue
        with et.backend(backend or et.get_backend()):
            fn, inputs, _ = make()
            out = fn(*inputs)
        covered |= _graph_nodes(out if isinstance(out, tuple) else (out,))
    ours = {c for c in _all_subclasses(Function) if c.__module__.startswith("edgetrain.")}
    missing = sorted(f"{c.__module__}.{c.__qualname__}" for c in ours - covered)
    assert not missing, f"Function subclasses without a gradcheck case: {missing}"


# Public names that need no case, and why.
NOT_DIFFERENTIABLE = {
    # -- Tensor: results that are not differentiable functions of the data
    **{f"Tensor.{n}": "comparison / logical op: a bool tensor" for n in
       ["eq", "ne", "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__", "__le__", "__gt__",
        "__ge__", "__and__", "__or__", "__invert__", "equal", "allclose", "all", "any"]},
    **{f"Tensor.{n}": "integer result (indices / integer or bool dtype)" for n in
       ["argmax", "argmin", "long", "int", "bool", "__index__"]},
    **{f"Tensor.{n}": "Python scalar / list / ndarray out of the graph" for n in
       ["item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__array__", "__len__"]},
    **{f"Tensor.{n}": "in-place update outside autograd (optimizers, init, no_grad code); "
       "raises on a leaf that requires grad" for n in
       ["add_", "sub_", "mul_", "div_", "copy_", "fill_", "zero_", "uniform_", "normal_",
        "__setitem__"]},
    **{f"Tensor.{n}": "metadata, no values" for n in
       ["dim", "size", "numel", "element_size", "is_contiguous", "shape", "ndim", "dtype",
        "device", "is_cuda", "is_leaf", "requires_grad", "__repr__"]},
    **{f"Tensor.{n}": "autograd bookkeeping (gradcheck itself exercises it)" for n in
       ["backward", "detach", "detach_", "data", "requires_grad_", "retain_grad"]},
    "Tensor.cpu": "identity (edgetrain tensors live on the CPU)",
    # -- nn.functional
    "F.one_hot": "integer output (class indices -> int64 one-hot)",
    # -- edgetrain.*
    **{f"et.{n}": "integer / bool result" for n in ["argmax", "argmin", "equal", "allclose",
                                                    "is_tensor", "numel"]},
    **{f"et.{n}": "factory: a new leaf, no input to differentiate" for n in
       ["tensor", "as_tensor", "from_numpy", "zeros", "ones", "empty", "full", "zeros_like",
        "ones_like", "full_like", "randn", "rand", "randint", "randperm", "arange",
        "linspace", "eye"]},
    # -- nn
    "nn.Module": "base class (every layer case runs through Module.__call__)",
    "nn.Parameter": "a leaf tensor (the layer cases check parameter gradients)",
}


def _public_names():
    names = set()
    for n, v in vars(et.Tensor).items():
        if n.startswith("__") and n.endswith("__"):
            # operators; not attributes Python adds (__slotnames__ after a deepcopy)
            if not callable(v) or n in ("__init__", "__hash__"):
                continue
        elif n.startswith("_"):
            continue
        names.add(f"Tensor.{n}")
    names |= {f"F.{n}" for n in F.__all__}
    names |= {f"nn.{n}" for n in et.nn.__all__
              if inspect.isclass(getattr(et.nn, n))}
    for n in dir(et):
        v = getattr(et, n)
        if n.startswith("_") or inspect.isclass(v) or inspect.ismodule(v) or not callable(v):
            continue
        mod = getattr(v, "__module__", "")
        if mod in ("edgetrain.tensor", "edgetrain") or (v.__doc__ or "").startswith(
                f"edgetrain.{n}(input, ...) == input."):
            names.add(f"et.{n}")
    return names


def test_every_public_op_has_a_case_or_a_reason():
    covered = {c for _, covers, _ in CASES.values() for c in covers}
    public = _public_names()
    missing = sorted(public - covered - set(NOT_DIFFERENTIABLE))
    assert not missing, ("public ops with neither a gradcheck case (a `covers` entry) nor an "
                         f"entry in NOT_DIFFERENTIABLE: {missing}")
    stale = sorted((covered | set(NOT_DIFFERENTIABLE)) - public)
    assert not stale, f"covers / NOT_DIFFERENTIABLE name things that do not exist: {stale}"


# ---------------------------------------------------------------------------
# gradcheck itself: the report, the defaults, and that it can fail
class _Exp1pct(Function):
    """exp whose backward is 1% too large."""
    @staticmethod
    def forward(ctx, a):
        y = np.exp(a)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved_tensors[0] * 1.01


class _TransposedGrad(Function):
    """y = a @ b with dB computed from the wrong operand order."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g @ b.T, (a.T @ g)[::-1].copy()


def test_a_1pct_backward_error_is_caught_in_float64():
    x = randn(200, 2, 3)
    with pytest.raises(GradcheckError) as ei:
        gradcheck(lambda a: _Exp1pct.apply(a), (x,))
    msg = str(ei.value)
    # the worst element, its indices and both values are named
    assert "output 0 with respect to input 0" in msg and "numerical" in msg
    assert "analytical" in msg and "d output0[" in msg and "/ d input0[" in msg
    assert gradcheck(lambda a: _Exp1pct.apply(a), (x,), raise_exception=False) is False


def test_wrong_gradient_names_the_worst_element():
    a, b = randn(201, 2, 3), randn(202, 3, 4)
    with pytest.raises(GradcheckError, match="with respect to input 1"):
        gradcheck(lambda a, b: _TransposedGrad.apply(a, b), (a, b))


class _Conv1pct(F._Conv2d):
    """conv2d whose weight gradient is 1% too large (float32, on a backend)."""
    @staticmethod
    def backward(ctx, g):
        dx, dw, db, *rest = F._Conv2d.backward(ctx, g)
        return (dx, dw * np.float32(1.01), db, *rest)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_1pct_conv_weight_gradient_error_is_caught_in_float32(backend):
    if backend not in et.backends():
        pytest.skip(f"backend {backend!r} is not built here")
    x = randn(203, 2, 3, 5, 5, dtype="float32")
    w = randn(204, 4, 3, 3, 3, dtype="float32", scale=0.5)
    with et.backend(backend):
        ok = lambda x, w: F._Conv2d.apply(x, w, None, (1, 1), (1, 1), (1, 1), 1)  # noqa: E731
        bad = lambda x, w: _Conv1pct.apply(x, w, None, (1, 1), (1, 1), (1, 1), 1)  # noqa: E731
        assert gradcheck(ok, (x, w))
        with pytest.raises(GradcheckError, match="with respect to input 1"):
            gradcheck(bad, (x, w))


def test_defaults_follow_the_dtype():
    assert FP64_DEFAULTS == {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}     # torch's
    # float32 with torch's float64 settings is noise, not a check: eps 1e-6 is
    # below float32's resolution, so a correct backward fails
    x = randn(205, 3, 4, dtype="float32")
    assert gradcheck(lambda a: a.tanh(), (x,))
    assert not gradcheck(lambda a: a.tanh(), (x,), raise_exception=False, **FP64_DEFAULTS)
    assert FP32_DEFAULTS["eps"] > FP64_DEFAULTS["eps"]


def test_fast_mode():
    a, b = randn(206, 2, 3), randn(207, 3, 4)
    assert gradcheck(lambda a, b: (a @ b).tanh(), (a, b), fast_mode=True)
    with pytest.raises(GradcheckError, match="fast mode"):
        gradcheck(lambda a: _Exp1pct.apply(a), (a,), fast_mode=True)


def test_input_errors_and_state_restored():
    with pytest.raises(ValueError, match="at least one input tensor to require gradient"):
        gradcheck(lambda a: a * 2, (et.ones(3),))
    leaf = randn(208, 3)
    with pytest.raises(ValueError, match="not a leaf"):
        gradcheck(lambda a: a * 2, (leaf * 2,))
    with pytest.raises(ValueError, match="eps must be a positive"):
        gradcheck(lambda a: a * 2, (leaf,), eps=0)
    # the inputs' values and .grad are left as they were
    leaf.grad = et.ones(3)
    before = leaf._data.copy()
    assert gradcheck(lambda a: (a * a).sum(), leaf)
    np.testing.assert_array_equal(leaf._data, before)
    np.testing.assert_array_equal(leaf.grad._data, np.ones(3))


def test_non_reentrant_backward_is_reported():
    calls = []

    class Flaky(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, g):
            calls.append(1)
            return g * (2 + 1e-3 * len(calls))

    with pytest.raises(GradcheckError, match="not reentrant"):
        gradcheck(lambda a: Flaky.apply(a), (randn(209, 3),), atol=1e-2)
