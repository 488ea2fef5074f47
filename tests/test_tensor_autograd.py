"""Tensor arithmetic and autograd vs PyTorch.

Values and gradients must match torch's to a relative error of 1e-5
(float32 arithmetic, same order of operations); 2-D matmul runs through the
backend queue and is compared at 1e-4 on every backend.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edgetrain as et  # noqa: E402


def rel_err(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert a.shape == ref.shape, f"shape {a.shape} != reference {ref.shape}"
    return np.abs(a - ref).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-12)


def compare(fn, *shapes, rtol=1e-5, seed=0, positive=False):
    """fn(*tensors) in both libraries; compares output and all input grads."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    if positive:
        arrays = [np.abs(a) + 0.5 for a in arrays]
    tt = [torch.tensor(a, requires_grad=True) for a in arrays]
    ee = [et.tensor(a, requires_grad=True) for a in arrays]
    yt, ye = fn(*tt), fn(*ee)
    assert ye.shape == tuple(yt.shape)
    assert rel_err(ye.detach().numpy(), yt.detach().numpy()) <= rtol
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(g))
    ye.backward(et.tensor(g))
    for i, (a, b) in enumerate(zip(ee, tt)):
        assert a.grad is not None, f"input {i} got no gradient"
        e = rel_err(a.grad.numpy(), b.grad.numpy())
        assert e <= rtol, f"input {i} gradient: relative error {e:.3g}"


@pytest.mark.parametrize("fn,shapes", [
    (lambda a, b: a + b, [(3, 4), (3, 4)]),
    (lambda a, b: a + b, [(3, 4), (4,)]),           # broadcast
    (lambda a, b: a - b, [(2, 1, 4), (3, 1)]),      # broadcast both ways
    (lambda a, b: a * b, [(3, 4), (3, 1)]),
    (lambda a, b: a / b, [(5,), (2, 5)]),
    (lambda a, b: b - a * 2.5 + 1, [(3,), (3,)]),   # scalars
    (lambda a, b: 3.0 / (a * a + 1) - b / 2, [(4, 2), (4, 2)]),
    (lambda a, b: (1 - a) * (2 + b), [(3, 3), (3,)]),  # reflected ops
    (lambda a, b: -a + b.sum(), [(2, 3), (4,)]),
    (lambda a, b: (a * b).sum(dim=1), [(3, 5), (3, 5)]),
    (lambda a, b: (a * b).sum(dim=(0, 2), keepdim=True), [(2, 3, 4), (2, 3, 4)]),
    (lambda a, b: (a + b).mean(), [(3, 4), (3, 4)]),
    (lambda a, b: (a - b).mean(dim=-1), [(3, 4), (3, 4)]),
    (lambda a, b: (a * b).mean(dim=0, keepdim=True), [(3, 4), (4,)]),
    (lambda a, b: a.reshape(4, 3) * b, [(3, 4), (4, 3)]),
    (lambda a, b: a.reshape(-1) + b.flatten(), [(3, 4), (2, 6)]),
    (lambda a, b: a.flatten(1) * b, [(2, 3, 4), (2, 12)]),
    (lambda a, b: a.T * b, [(3, 4), (4, 3)]),
    (lambda a, b: a.transpose(0, 1).permute(2, 0, 1) + b, [(2, 3, 4), (4, 3, 2)]),
    (lambda a, b: a.unsqueeze(1) * b.squeeze(), [(3, 4), (1, 2, 1, 4)]),
    (lambda a, b: a[1:, ::2] * b[0], [(3, 4), (2, 2, 2)]),
    (lambda a, b: a[[0, 2, 0]] + b, [(3, 4), (3, 4)]),        # advanced, repeated
    (lambda a, b: a[:, 1] - b[..., -1], [(3, 4), (3, 5)]),
    (lambda a, b: a.max() * b, [(3, 4), (2,)]),
    (lambda a, b: a.max(dim=1).values + b.min(dim=0)[0], [(3, 4), (2, 3)]),
    (lambda a, b: a.exp() + b.tanh() + a.sigmoid(), [(3, 4), (3, 4)]),
    (lambda a, b: a.relu() * b.abs(), [(3, 4), (3, 4)]),
    (lambda a, b: et_or_torch_cat(a, b), [(2, 3), (4, 3)]),
    (lambda a, b: et_or_torch_stack(a, b), [(2, 3), (2, 3)]),
    (lambda a, b: a.expand(3, 4) * b, [(1, 4), (3, 4)]),
    (lambda a, b: a.clamp(-0.5, 0.5) + b.var(dim=0), [(3, 4), (2, 4)]),
])
def test_ops_match_torch(fn, shapes):
    compare(fn, *shapes)


def et_or_torch_cat(a, b):
    return torch.cat([a, b], 0) if isinstance(a, torch.Tensor) else et.cat([a, b], 0)


def et_or_torch_stack(a, b):
    return torch.stack([a, b], 1) if isinstance(a, torch.Tensor) else et.stack([a, b], 1)


@pytest.mark.parametrize("fn,shapes", [
    (lambda a, b: a.log() * b.sqrt(), [(3, 4), (3, 4)]),
    (lambda a, b: a ** b, [(3, 4), (3, 4)]),
    (lambda a, b: a ** 2 + 2 ** b + a ** 0.5, [(3, 4), (4,)]),
])
def test_positive_ops_match_torch(fn, shapes):
    compare(fn, *shapes, positive=True)


@pytest.mark.parametrize("backend", et.backends())
@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((1, 7), (7, 1)), ((4,), (4, 3)),
                                   ((3, 4), (4,)), ((5,), (5,)), ((2, 3, 4), (4, 2)),
                                   ((2, 3, 4), (2, 4, 5))])
def test_matmul(backend, sa, sb):
    with et.backend(backend):
        compare(lambda a, b: a @ b, sa, sb, rtol=1e-4)


def test_gradient_accumulates_over_two_backwards():
    x = et.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    g1 = x.grad
    np.testing.assert_allclose(g1.numpy(), [2, 4, 6])
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5, 7, 9])
    assert x.grad is g1                       # accumulated in place, like torch
    assert not x.grad.requires_grad


def test_shared_subexpression_and_diamond():
    x = et.tensor([0.5, -1.0], requires_grad=True)
    y = x * 2
    z = y * y + y          # y used twice: gradients must add
    z.sum().backward()
    xt = torch.tensor([0.5, -1.0], requires_grad=True)
    yt = xt * 2
    (yt * yt + yt).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-6)


def test_shared_input_reached_first_through_the_longer_path():
    """y + f(y) with y the Add's FIRST input (MobileNetV2's x + conv(x)): y's node
    must wait for f's gradient. A DFS that marks nodes when pushed processed y
    before f, losing f's contribution (1 instead of 7 below)."""
    x = et.tensor([0.5, -1.0], requires_grad=True)
    y = x * 1.0
    z = y + (y * 2) * 3                      # dz/dx = 1 + 6
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [7.0, 7.0])
    x.grad = None
    y = x * 1.0
    w = y + ((y * 2).relu() + y * 2)        # two long paths and the short one
    w.sum().backward()
    xt = torch.tensor([0.5, -1.0], requires_grad=True)
    yt = xt * 1.0
    (yt + ((yt * 2).relu() + yt * 2)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy())


def test_deep_graph_no_recursion_limit():
    x = et.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1e-3
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0])


def test_no_grad_and_enable_grad():
    x = et.tensor([1.0, 2.0], requires_grad=True)
    with et.no_grad():
        y = x * 2
        assert not et.is_grad_enabled()
        with et.enable_grad():
            w = x * 2
    assert et.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert w.requires_grad

    @et.no_grad()
    def f(t):
        return t * 3
    assert not f(x).requires_grad
    assert et.is_grad_enabled()


def test_retain_graph_and_freed_graph():
    x = et.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 8.0])
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()


def test_backward_errors():
    x = et.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        (x * 2).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        et.tensor([1.0]).sum().backward()
    (x * 2).backward(et.tensor([1.0, 1.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0])
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        (x * 2).backward(et.tensor([1.0, 1.0, 1.0]))


def test_detach_item_and_leaf_flags():
    x = et.tensor([[1.5]], requires_grad=True)
    y = x * 2
    assert x.is_leaf and not y.is_leaf
    assert y.grad_fn is not None and "MulBackward" in repr(y.grad_fn)
    d = y.detach()
    assert not d.requires_grad and d.is_leaf and d.grad_fn is None
    assert np.shares_memory(d.numpy(), y._data)
    assert y.item() == 3.0 and isinstance(y.item(), float)
    assert et.tensor([7], dtype="int64").item() == 7
    with pytest.raises(RuntimeError, match="elements cannot be converted"):
        et.tensor([1.0, 2.0]).item()


def test_from_numpy_shares_memory_and_numpy_view():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = et.from_numpy(a)
    assert t.shape == (2, 3) and t.dtype == "float32"
    a[0, 0] = 42.0
    assert t[0, 0].item() == 42.0
    v = t.numpy()
    assert v is a or np.shares_memory(v, a)
    v[1, 2] = -1.0
    assert a[1, 2] == -1.0
    # et.tensor copies
    c = et.tensor(a)
    a[0, 1] = 99.0
    assert c[0, 1].item() == 1.0
    # a float64 array stays float64 (zero-copy), as torch.from_numpy
    assert et.from_numpy(np.zeros(3)).dtype == "float64"
    # numpy() of a tensor that requires grad raises like torch
    with pytest.raises(RuntimeError, match="requires grad"):
        et.tensor([1.0], requires_grad=True).numpy()


def test_tensor_dtypes_and_attributes():
    t = et.tensor([[1, 2, 3], [4, 5, 6]])
    assert t.dtype == "float32"                   # api.md: float32 by default
    assert t.shape == (2, 3) and t.ndim == 2 and t.dim() == 2
    assert t.size() == (2, 3) and t.size(1) == 3 and t.size(-1) == 3
    assert t.numel() == 6 and len(t) == 2
    assert et.tensor(np.zeros(2, np.float64)).dtype == "float32"
    assert et.tensor([1, 2], dtype="int64").dtype == "int64"
    assert t.long().dtype == "int64" and t.long().float().dtype == "float32"
    assert t.to("int32").dtype == "int32"
    rows = list(t)
    assert len(rows) == 2 and rows[1].tolist() == [4.0, 5.0, 6.0]
    assert (t > 2).dtype == "bool" and (t > 2).sum().item() == 4
    assert (t == t).all().item() and not (t != t).any().item()
    assert t.argmax().item() == 5
    assert t.argmax(dim=1).tolist() == [2, 2] and t.argmax(1).dtype == "int64"
    assert t.argmax(dim=0, keepdim=True).shape == (1, 3)
    assert t.mean().item() == 3.5 and t.sum(dim=0).tolist() == [5, 7, 9]
    z = t.clone().zero_()
    assert z.sum().item() == 0 and t.sum().item() == 21


def test_factories():
    et.manual_seed(0)
    a = et.randn(2, 3)
    et.manual_seed(0)
    b = et.randn((2, 3))
    assert a.shape == (2, 3) and np.array_equal(a.numpy(), b.numpy())
    assert et.zeros(2, 2).sum().item() == 0 and et.ones(3).sum().item() == 3
    assert et.zeros_like(a).shape == a.shape and et.ones_like(a).dtype == "float32"
    r = et.rand(1000)
    assert 0 <= r.numpy().min() and r.numpy().max() < 1
    assert et.arange(5).tolist() == [0, 1, 2, 3, 4] and et.arange(5).dtype == "int64"
    assert et.arange(0, 1, 0.25).dtype == "float32"
    w = et.zeros(3, requires_grad=True)
    assert w.requires_grad and w.is_leaf


def test_repr_like_torch():
    for data, kw in [([[1.5, 2.0], [3.0, 4.0]], {}), ([1.0, 2.0], {"requires_grad": True})]:
        assert repr(et.tensor(data, **kw)) == repr(torch.tensor(data, **kw))
    assert repr(et.tensor([1, 2], dtype="int64")) == repr(torch.tensor([1, 2]))


def test_inplace_on_leaf_requiring_grad_raises():
    w = et.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place"):
        w.zero_()
    with et.no_grad():
        w -= 0.5                                  # what optimizers do
    assert w.item() == 0.5 and w.is_leaf and w.requires_grad


def test_retain_grad_on_intermediate():
    x = et.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    y.retain_grad()
    (y * y).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), [6.0, 12.0])


def test_pow_grad_stays_float32_after_a_layer():
    """x ** 2 with a Python int exponent after a layer: NumPy 2 makes
    float32 ** int64 a float64, which the layer's backward must not receive."""
    lin = et.nn.Linear(4, 3)
    x = et.ones(2, 4)
    (lin(x) ** 2).sum().backward()
    assert lin.weight.grad.numpy().dtype == np.float32
    y = et.tensor([1.0, 2.0], requires_grad=True)
    (y ** 3).sum().backward()
    assert y.grad.numpy().dtype == np.float32
    np.testing.assert_allclose(y.grad.numpy(), [3.0, 12.0])
