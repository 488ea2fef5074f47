"""nn.Module semantics vs PyTorch: parameter/state_dict names and order,
loading a torch state_dict directly, strict-mode errors, train/eval,
zero_grad."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edgetrain as et  # noqa: E402


def make(nn):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4, 10))


class Net(et.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = make(et.nn)
        self.head = et.nn.Linear(10, 2)
        self.register_buffer("scale", et.ones(2))
        self.alias = self.head            # same module twice: deduplicated

    def forward(self, x):
        return self.head(self.features(x)) * self.scale


def test_names_and_order_match_torch():
    e, t = make(et.nn), make(torch.nn)
    assert [n for n, _ in e.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert [n for n, _ in e.named_buffers()] == [n for n, _ in t.named_buffers()]
    assert list(e.state_dict().keys()) == list(t.state_dict().keys())
    assert [n for n, _ in e.named_modules()] == [n for n, _ in t.named_modules()]
    assert [n for n, _ in e.named_children()] == [n for n, _ in t.named_children()]
    for (n, p), (_, tp) in zip(e.named_parameters(), t.named_parameters()):
        assert p.shape == tuple(tp.shape), n
        assert isinstance(p, et.nn.Parameter) and p.requires_grad
    sd = e.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["1.num_batches_tracked"].shape == ()
    assert repr(e) == repr(t)


def test_state_dict_is_a_copy():
    e = make(et.nn)
    sd = e.state_dict()
    sd["0.weight"][...] = 123.0
    assert not np.any(e[0].weight.detach().numpy() == 123.0)


def test_load_torch_state_dict_and_same_outputs():
    torch.manual_seed(0)
    t = make(torch.nn).eval()
    with torch.no_grad():
        t[1].running_mean.uniform_(-1, 1)
        t[1].running_var.uniform_(0.5, 2)
    e = make(et.nn).eval()
    res = e.load_state_dict({k: v.detach() for k, v in t.state_dict().items()})
    assert res.missing_keys == [] and res.unexpected_keys == []
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(e(et.tensor(x)).detach().numpy(), t(torch.tensor(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)
    # lists and numpy arrays load too (anything numpy.asarray understands)
    e.load_state_dict({k: v.tolist() for k, v in e.state_dict().items()})


def test_load_copies_in_place():
    e = make(et.nn)
    w = e[0].weight
    before = w._data
    sd = e.state_dict()
    sd["0.weight"] = np.ones_like(sd["0.weight"])
    e.load_state_dict(sd)
    assert e[0].weight is w and w._data is before and float(w.detach().numpy().min()) == 1.0


def test_strict_errors_name_keys():
    e = make(et.nn)
    sd = e.state_dict()
    del sd["7.bias"]
    sd["bogus.weight"] = np.zeros(3)
    with pytest.raises(ValueError) as ei:
        e.load_state_dict(sd)
    msg = str(ei.value)
    assert '"7.bias"' in msg and "Missing" in msg
    assert '"bogus.weight"' in msg and "Unexpected" in msg
    assert isinstance(ei.value, RuntimeError) and isinstance(ei.value, et.EdgetrainError)
    res = e.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["7.bias"] and res.unexpected_keys == ["bogus.weight"]
    sd = e.state_dict()
    sd["7.weight"] = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"size mismatch for 7\.weight.*\(3, 4\).*\(10, 4\)"):
        e.load_state_dict(sd, strict=False)


def test_train_eval_and_zero_grad():
    e = make(et.nn)
    assert e.training and all(m.training for m in e.modules())
    assert e.eval() is e and not any(m.training for m in e.modules())
    e.train()
    assert all(m.training for m in e.modules())
    x = et.randn(2, 3, 8, 8)
    e(x).sum().backward()
    assert all(p.grad is not None for p in e.parameters())
    e.zero_grad(set_to_none=False)
    assert all(float(np.abs(p.grad.numpy()).max()) == 0.0 for p in e.parameters())
    e.zero_grad()
    assert all(p.grad is None for p in e.parameters())


def test_custom_module_registration():
    n = Net()
    names = [k for k, _ in n.named_parameters()]
    assert names[-2:] == ["head.weight", "head.bias"] and len(names) == len(set(names))
    assert "scale" in n.state_dict() and "alias.weight" in n.state_dict()
    assert [k for k, _ in n.named_buffers()][0] == "scale"    # own buffers first (torch)
    assert list(n.state_dict())[0] == "scale"
    assert len(list(n.children())) == 2               # alias deduplicated
    out = n(et.randn(1, 3, 8, 8))
    assert out.shape == (1, 2)
    n.head = None
    assert "head.weight" not in dict(n.named_parameters())
    with pytest.raises(TypeError):
        n.register_parameter("p", et.tensor([1.0]))    # not a Parameter
    with pytest.raises(TypeError):
        n.features = 3                                 # a module slot


def test_sequential_container_ops():
    s = et.nn.Sequential(et.nn.Linear(2, 3), et.nn.ReLU())
    assert len(s) == 2 and isinstance(s[0], et.nn.Linear) and isinstance(s[-1], et.nn.ReLU)
    s.append(et.nn.Linear(3, 1))
    assert len(s) == 3 and list(s.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [type(m).__name__ for m in s] == ["Linear", "ReLU", "Linear"]
    assert isinstance(s[1:], et.nn.Sequential) and len(s[1:]) == 2
    ml = et.nn.ModuleList([et.nn.Linear(1, 1) for _ in range(3)])
    assert len(list(ml.parameters())) == 6 and "2.bias" in ml.state_dict()
    assert isinstance(et.nn.Identity()(et.ones(2)), et.Tensor)


def test_parameter_init_bounds_like_torch():
    et.manual_seed(0)
    c = et.nn.Conv2d(4, 8, 3)
    bound = 1 / np.sqrt(4 * 9)
    w = c.weight.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(c.bias.detach().numpy()).max() <= bound
    lin = et.nn.Linear(100, 50)
    assert np.abs(lin.weight.detach().numpy()).max() <= 0.1
    assert abs(lin.weight.detach().numpy().std() - 0.1 / np.sqrt(3)) < 0.005
    bn = et.nn.BatchNorm2d(3)
    assert bn.weight.detach().numpy().tolist() == [1, 1, 1] and bn.running_var.numpy().tolist() == [1, 1, 1]
    et.manual_seed(5)
    a = et.nn.Linear(3, 3).weight.detach().numpy().copy()
    et.manual_seed(5)
    assert np.array_equal(a, et.nn.Linear(3, 3).weight.detach().numpy())


def test_apply_and_modules():
    e = make(et.nn)
    seen = []
    e.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "Sequential" and seen.count("Conv2d") == 2
