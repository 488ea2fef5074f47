"""Training memory (issue 5): what autograd nodes keep alive between forward and backward.

- a node keeps no reference to the array of an input another op made (only an
  edge to that op's node), so a float32 intermediate dies as soon as nothing
  but the graph would hold it;
- relu saves a bit mask (1 bit per element), not its float32 output; same
  gradient bits;
- batch_norm under a low-precision policy saves xhat in bfloat16 (2 bytes per
  element), not x (4); same forward bits, gradients within bf16 rounding;
  under fp32 it saves x and its gradients are the fp32 kernel's, bit for bit;
- max_pool2d saves its argmax indices as int32, not int64; same gradients;
- ResNet-18's saved bytes per node type in int8 (small input);
- the opt-in malloc setting (EDGETRAIN_MMAP_THRESHOLD_KB: glibc's fixed mmap
  threshold) returns a freed large buffer to the OS, which glibc's dynamic
  threshold does not.
"""
import json
import os
import platform
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch

import edgetrain as et
from edgetrain import _C
import edgetrain.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _graph(root):
    """The nodes reachable from tensor root (each once)."""
    seen, out, stack = set(), [], [root.grad_fn]
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        out.append(n)
        stack.extend(t.grad_fn for t in n.inputs if t is not None)
    return out


def _saved_bytes(node):
    return sum(a.nbytes for a in node.saved_tensors if isinstance(a, np.ndarray))


# ---------------------------------------------------------------------------
# autograd edges
def test_graph_does_not_keep_intermediate_arrays_alive():
    x = et.randn(64, 64).requires_grad_()
    h = x * 2.0                      # an intermediate: Mul's output
    ref = weakref.ref(h._data)
    y = (h + 1.0).sum()              # Add saves nothing, Sum saves no array of h
    del h
    # old behaviour: Add's node kept the Tensor h (and so its array) in .inputs
    assert ref() is None, "the graph still holds the intermediate's array"
    y.backward()
    np.testing.assert_array_equal(x.grad._data, np.full((64, 64), 2.0, np.float32))


def test_edges_keep_the_graph_and_leaves():
    a = et.randn(3, 4).requires_grad_()
    b = et.randn(3, 4)               # no grad: no edge
    y = (a * b).relu()
    node = y.grad_fn
    (edge,) = node.inputs
    assert edge.requires_grad and not edge.is_leaf and edge.shape == (3, 4)
    mul = edge.grad_fn
    assert mul.inputs[0] is a        # a leaf stays itself: its .grad is filled
    assert mul.inputs[1] is None
    assert [f for f, _ in node.next_functions] == [mul]
    y.sum().backward()
    want = np.where(a._data * b._data > 0, b._data, 0).astype(np.float32)
    np.testing.assert_array_equal(a.grad._data, want)


def test_retain_grad_and_shared_input_still_work():
    # y feeds two consumers (y * y + y): the engine sums both gradients
    x = et.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = x * 3.0
    y.retain_grad()
    z = (y * y + y).sum()
    z.backward()
    np.testing.assert_allclose(y.grad._data, 2 * y._data + 1)
    np.testing.assert_allclose(x.grad._data, 3 * (2 * y._data + 1))


# ---------------------------------------------------------------------------
# relu: bit mask
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000, 70001])
def test_relu_saves_bits_and_same_gradient(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    if n >= 9:
        x[:5] = [0.0, -0.0, np.nan, np.inf, -np.inf]
    g = rng.standard_normal(n).astype(np.float32)
    xt = et.from_numpy(x.copy()).requires_grad_()
    y = F.relu(xt)
    assert _saved_bytes(y.grad_fn) == (n + 7) // 8           # was 4 * n (y)
    y.backward(et.from_numpy(g))
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = torch.relu(tx)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(y._data, ty.detach().numpy())
    # bit for bit as the old backward from y (dy where y > 0), NaN included
    assert xt.grad._data.tobytes() == _C.relu_backward(g, _C.relu_forward(x)).tobytes()
    # and as PyTorch's except at NaN (PyTorch passes dy there: x <= 0 is false;
    # edgetrain's rule, before and after the mask, gives 0)
    fin = ~np.isnan(x)
    assert xt.grad._data[fin].tobytes() == tx.grad.numpy()[fin].tobytes()


def test_relu_mask_kernel_bits_and_errors():
    x = np.array([1, -1, 0, 2, 3, -4, 5, 6, 7, -0.5], np.float32)
    y, m = _C.relu_forward_mask(x)
    assert m.dtype == np.uint8 and m.shape == (2,)
    assert m[0] == 0b11011001 and m[1] == 0b01        # bit i of byte i // 8; tail bits clear
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    with pytest.raises(ValueError, match="relu_backward_mask: mask must have"):
        _C.relu_backward_mask(np.ones(17, np.float32), m)
    with pytest.raises((TypeError, ValueError), match="relu_backward_mask"):
        _C.relu_backward_mask(np.ones(10, np.float32), m.astype(np.int32))


def test_relu_no_grad_saves_nothing():
    with et.no_grad():
        y = F.relu(et.randn(100))
    assert y.grad_fn is None


# ---------------------------------------------------------------------------
# batch_norm
def _bn_run(prec, x, g, w, b, training=True):
    bn = et.nn.BatchNorm2d(x.shape[1])
    bn.weight._data[:] = w
    bn.bias._data[:] = b
    if not training:
        bn.eval()
        bn.running_mean._data[:] = 0.25
        bn.running_var._data[:] = 2.0
    xt = et.from_numpy(x.copy()).requires_grad_()
    with et.precision(prec):
        y = bn(xt)
        saved = _saved_bytes(y.grad_fn)
        y.backward(et.from_numpy(g))
    return y._data, saved, xt.grad._data, bn.weight.grad._data, bn.bias.grad._data, bn


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("prec", ["int8", "bf16", "int8-mixed"])
def test_batch_norm_lowp_saves_bf16_xhat(prec, training):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 3, 6, 5)) * 3 + 1).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = np.array([0.5, 1.5, -2], np.float32), np.array([0.1, 0, -0.3], np.float32)
    y32, s32, dx32, dw32, db32, _ = _bn_run("fp32", x, g, w, b, training)
    y, s, dx, dw, db, _ = _bn_run(prec, x, g, w, b, training)
    assert s32 >= x.nbytes and s < s32
    assert s - 3 * 4 * 2 <= x.size * 2                        # xhat bf16 (+ (C,) stats)
    assert y.tobytes() == y32.tobytes()                        # forward unchanged
    np.testing.assert_array_equal(db, db32)                    # sum(dy): no xhat in it
    scale = np.abs(dx32).max()
    np.testing.assert_allclose(dx, dx32, rtol=0, atol=4e-3 * scale)
    np.testing.assert_allclose(dw, dw32, rtol=2e-2, atol=4e-3 * np.abs(dw32).max())
    # and not trivially equal: the bf16 rounding is there (training: dx depends on xhat)
    if training:
        assert not np.array_equal(dw, dw32)


def test_batch_norm_fp32_unchanged_vs_torch():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((5, 4, 7, 3)) * 2 - 1).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    y, saved, dx, dw, db, _ = _bn_run("fp32", x, g, w, b)
    assert saved >= x.nbytes                                   # x at 4 bytes
    tb = torch.nn.BatchNorm2d(4)
    tb.weight.data[:] = torch.from_numpy(w)
    tb.bias.data[:] = torch.from_numpy(b)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = tb(tx)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, tb.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    # the fp32 kernel from x, bit for bit
    _, mean, invstd = _C.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5)
    want = _C.batch_norm_backward(g, x, w, mean, invstd, True)
    assert dx.tobytes() == want[0].tobytes() and dw.tobytes() == want[1].tobytes()


def test_batch_norm_backward_xhat_errors():
    xh = np.zeros((2, 3, 4), np.uint16)
    with pytest.raises(ValueError, match=r"batch_norm_backward_xhat: dy shape \(2, 3, 5\) must match xhat shape"):
        _C.batch_norm_backward_xhat(np.zeros((2, 3, 5), np.float32), xh, None,
                                    np.ones(3, np.float32))
    with pytest.raises((TypeError, ValueError), match="batch_norm_backward_xhat"):
        _C.batch_norm_backward_xhat(np.zeros((2, 3, 4), np.float32), xh.astype(np.float32),
                                    None, np.ones(3, np.float32))


# ---------------------------------------------------------------------------
# max_pool2d: int32 indices
def test_max_pool_saves_int32_indices_same_gradient():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 17, 13)).astype(np.float32)
    xt = et.from_numpy(x.copy()).requires_grad_()
    y = F.max_pool2d(xt, 3, 2, 1)
    (idx,) = y.grad_fn.saved_tensors
    assert idx.dtype == np.int32 and idx.nbytes == y._data.size * 4
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(et.from_numpy(g))
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = torch.nn.functional.max_pool2d(tx, 3, 2, 1)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(y._data, ty.detach().numpy())
    np.testing.assert_array_equal(xt.grad._data, tx.grad.numpy())
    # return_indices still gives PyTorch's int64
    _, ind = F.max_pool2d(et.from_numpy(x), 3, 2, 1, return_indices=True)
    assert ind._data.dtype == np.int64


# ---------------------------------------------------------------------------
# ResNet-18: saved bytes per node type, int8 vs fp32
def test_resnet18_saved_bytes_per_layer_type():
    et.manual_seed(0)
    model = et.models.resnet18(num_classes=10, small_input=True)
    model.train()
    x = et.randn(2, 3, 32, 32)
    per, nodes = {}, {}
    for prec in ("fp32", "int8"):
        with et.precision(prec):
            out = model(x)
        counts = {}
        nodes[prec] = _graph(out)
        for n in nodes[prec]:
            k = type(n).__name__
            counts.setdefault(k, [0, 0])
            counts[k][0] += _saved_bytes(n)
            counts[k][1] += 1
        per[prec] = counts
        del out
    f32, i8 = per["fp32"], per["int8"]
    # every relu output is 32*16*16... elements: the masks are 1/32 of fp32's y
    relu_elems = 2 * 64 * 32 * 32 * (1 + 4) + 2 * (128 * 16 * 16 + 256 * 8 * 8
                                                  + 512 * 4 * 4) * 4
    assert f32["Relu"][0] == i8["Relu"][0] <= relu_elems // 8 + f32["Relu"][1]
    bn_elems = 2 * 64 * 32 * 32 * 5 + 2 * (128 * 16 * 16 + 256 * 8 * 8 + 512 * 4 * 4) * 5
    assert f32["_BatchNorm"][0] >= 4 * bn_elems
    assert i8["_BatchNorm"][0] <= 2 * bn_elems + 8 * 20 * 512
    # conv inputs (the _SavedToken's count, not the weights): x_q at 1 byte vs 4
    conv_x = {p: sum(n.saved_tensors[2].nbytes for n in nodes[p] if type(n).__name__ == "_Conv2d")
              for p in nodes}
    assert conv_x["int8"] * 4 == conv_x["fp32"]
    # nothing else: no node type saves more than these
    assert set(i8) <= {"Relu", "_BatchNorm", "_Conv2d", "Add", "_AdaptiveAvgPool2d",
                       "_Linear", "Reshape", "Flatten", "View", "_MaxPool2d"} | set(f32)


# ---------------------------------------------------------------------------
# malloc: a freed large buffer goes back to the OS
_RSS_CHILD = r"""
import json, sys
import numpy as np
import edgetrain  # noqa: F401  (sets the threshold when told to)

def rss():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmRSS")).split()[1]) * 1024

big = np.ones(24 << 18, np.float32)      # 24 MiB: mmapped either way
del big                                   # glibc's dynamic threshold rises to 24 MiB
a = np.ones(8 << 18, np.float32)          # 8 MiB: heap (dynamic) or its own mapping (fixed)
before = rss()
del a
after = rss()
json.dump({"freed": before - after}, sys.stdout)
"""


def _freed(env_value):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES", "EDGETRAIN_MMAP_THRESHOLD_KB")}
    if env_value is not None:
        env["EDGETRAIN_MMAP_THRESHOLD_KB"] = env_value
    env["PYTHONPATH"] = ROOT
    p = subprocess.run([sys.executable, "-c", _RSS_CHILD], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)["freed"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS from /proc: Linux only")
def test_freed_buffer_returns_to_os():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: no M_MMAP_THRESHOLD to set")
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("under AddressSanitizer (make test-asan): its allocator replaces glibc's "
                    "malloc, so mallopt(M_MMAP_THRESHOLD) has nothing to set and freed blocks "
                    "sit in ASan's quarantine")
    assert _freed("256") >= 7 << 20         # opt-in: a fixed threshold
    # glibc's dynamic threshold (the default, or EDGETRAIN_MMAP_THRESHOLD_KB=0): the
    # 8 MiB came from the heap and stays resident after free (what the setting avoids)
    assert _freed(None) < 1 << 20
    assert _freed("0") < 1 << 20


def test_bad_mmap_threshold_env_names_it():
    env = dict(os.environ, EDGETRAIN_MMAP_THRESHOLD_KB="lots", PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", "import edgetrain"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "EDGETRAIN_MMAP_THRESHOLD_KB" in p.stderr and "lots" in p.stderr
    with pytest.raises(ValueError, match="set_mmap_threshold"):
        _C.set_mmap_threshold(-1)


# ---------------------------------------------------------------------------
# backward in place over the engine's gradient buffer (relu, low-precision batch norm)
def test_inplace_kernels_same_bits():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    _, m = _C.relu_forward_mask(x)
    want = _C.relu_backward_mask(g, m)
    g2 = g.copy()
    got = _C.relu_backward_mask(g2, m, inplace=True)
    assert got is g2 and got.tobytes() == want.tobytes()
    w = rng.standard_normal(4).astype(np.float32)
    _, _, invstd, xh = _C.batch_norm_forward(x, w, None, None, None, True, 0.1, 1e-5,
                                             save_xhat=True)
    want = _C.batch_norm_backward_xhat(g, xh, w, invstd)
    g2 = g.copy()
    got = _C.batch_norm_backward_xhat(g2, xh, w, invstd, inplace=True)
    assert got[0] is g2
    for a, b in zip(got, want):
        assert a.tobytes() == b.tobytes()
    ro = g.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="relu_backward_mask: dy is updated in place"):
        _C.relu_backward_mask(ro, _C.relu_forward_mask(x)[1], inplace=True)


@pytest.mark.parametrize("prec", ["fp32", "int8"])
def test_shared_gradient_is_not_overwritten(prec):
    """h feeds relu and a Mul through one Add: Add's backward hands the same
    gradient array to both; relu must not write over it (the engine sees the
    second reference), so the Mul branch still gets the true gradient."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    xt = et.from_numpy(x.copy()).requires_grad_()
    tx = torch.from_numpy(x.copy()).requires_grad_()
    bn = et.nn.BatchNorm2d(3)
    tbn = torch.nn.BatchNorm2d(3)
    with et.precision(prec):
        h = bn(xt * 1.5)
        out = F.relu(h) + h * 5.0
        (out * out).sum().backward()
    th = tbn(tx * 1.5)
    tout = torch.relu(th) + th * 5.0
    (tout * tout).sum().backward()
    tol = 1e-4 if prec == "fp32" else 2e-2
    np.testing.assert_allclose(xt.grad._data, tx.grad.numpy(), rtol=tol,
                               atol=tol * np.abs(tx.grad.numpy()).max())


def test_engine_marks_only_unshared_gradients():
    seen = []
    orig = F.Relu.backward

    def spy(ctx, g):
        seen.append(ctx._grad_owned)
        return orig(ctx, g)

    F.Relu.backward = staticmethod(spy)
    try:
        x = et.randn(4, 8).requires_grad_()
        (F.relu(F.relu(x * 2.0)) * 3.0).sum().backward()
        assert seen == [True, True]                 # fresh arrays from Mul / relu
        seen.clear()
        g = et.ones(4, 8)
        F.relu(x * 2.0).backward(g)                 # the caller's array: never written
        assert seen == [False]
        np.testing.assert_array_equal(g._data, np.ones((4, 8), np.float32))
        seen.clear()
        with et.autograd.detect_anomaly():
            (F.relu(x * 2.0) * 3.0).sum().backward()
        assert seen == [False]                      # anomaly mode reads g afterwards
    finally:
        F.Relu.backward = staticmethod(orig)


def test_max_pool_backward_binding_int32_equals_int64():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 70, 9, 11)).astype(np.float32)   # 210 planes: > one chunk
    y, idx = _C.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1), (1, 1), False)
    g = rng.standard_normal(y.shape).astype(np.float32)
    want = _C.max_pool2d_backward(g, idx, x.shape)
    got = _C.max_pool2d_backward(g, idx.astype(np.int32), x.shape)
    assert got.tobytes() == want.tobytes()
    bad = idx.astype(np.int32)
    bad.flat[-1] = 99        # outside the 9*11 plane
    with pytest.raises(ValueError, match="max_pool2d_backward: index 99"):
        _C.max_pool2d_backward(g, bad, x.shape)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 33001])
def test_relu_forward_mask_bits_every_length(n):
    """The vectorised full bytes and the scalar tail agree with NumPy bit for
    bit: y = x where x >= 0 or NaN (NaN and -0.0 kept), bit i set iff y > 0,
    little-endian within a byte."""
    from edgetrain import _C
    x = np.random.RandomState(n).randn(n).astype(np.float32)
    x[::17] = np.nan
    x[::23] = -0.0
    y, m = _C.relu_forward_mask(x)
    ry = np.where(x < 0, np.float32(0), x).astype(np.float32)
    assert np.array_equal(y.view(np.uint32), ry.view(np.uint32))
    assert np.array_equal(m, np.packbits((ry > 0).astype(np.uint8), bitorder="little"))
