"""SGD / Adam vs torch.optim: 10 steps on the same small model and data;
parameters must match to a relative error of 1e-6 (per tensor, max |diff| /
max |ref|; float32 update rules in the same order). Also the state_dict
layout and round trip."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import edgetrain as et  # noqa: E402

RTOL = 1e-6


def models():
    torch.manual_seed(0)
    t = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    e = et.nn.Sequential(et.nn.Linear(6, 5), et.nn.ReLU(), et.nn.Linear(5, 3))
    e.load_state_dict({k: v.detach() for k, v in t.state_dict().items()})
    return e, t


def grads_step(e, t, step):
    """Feeds both models the *same* gradients (taken from torch) so that the
    comparison isolates the optimizer from forward/backward rounding."""
    rng = np.random.default_rng(step)
    x = torch.tensor(rng.standard_normal((4, 6)).astype(np.float32))
    y = torch.tensor(rng.integers(0, 3, 4))
    t.zero_grad()
    torch.nn.functional.cross_entropy(t(x), y).backward()
    for p, tp in zip(e.parameters(), t.parameters()):
        p.grad = et.tensor(tp.grad.numpy())


def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def run(et_opt_fn, torch_opt_fn, steps=10):
    e, t = models()
    eo, to = et_opt_fn(e.parameters()), torch_opt_fn(t.parameters())
    for s in range(steps):
        grads_step(e, t, s)
        eo.step()
        to.step()
        for (n, p), tp in zip(e.named_parameters(), t.parameters()):
            err = rel(p.detach().numpy(), tp.detach().numpy())
            assert err <= RTOL, f"step {s} {n}: relative error {err:.3g}"
    return e, t, eo, to


SGD_CONFIGS = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.5),
               dict(lr=0.1, momentum=0.9, nesterov=True), dict(lr=0.1, weight_decay=1e-2),
               dict(lr=0.1, momentum=0.8, dampening=0.1, weight_decay=5e-3),
               dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)]


@pytest.mark.parametrize("kw", SGD_CONFIGS, ids=[str(k) for k in SGD_CONFIGS])
def test_sgd_matches_torch(kw):
    run(lambda p: et.optim.SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw))


ADAM_CONFIGS = [dict(), dict(lr=1e-2), dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6),
                dict(lr=1e-2, weight_decay=1e-2)]


@pytest.mark.parametrize("kw", ADAM_CONFIGS, ids=[str(k) for k in ADAM_CONFIGS])
def test_adam_matches_torch(kw):
    run(lambda p: et.optim.Adam(p, **kw), lambda p: torch.optim.Adam(p, **kw))


def _groups(params):
    ps = list(params)
    return [{"params": ps[:2], "momentum": 0.9}, {"params": ps[2:], "lr": 0.01}]


def test_param_groups_per_group_options():
    e, t, eo, to = run(lambda p: et.optim.SGD(_groups(p), lr=0.5),
                       lambda p: torch.optim.SGD(_groups(p), lr=0.5))
    assert [g["lr"] for g in eo.param_groups] == [0.5, 0.01]
    assert [g["momentum"] for g in eo.param_groups] == [0.9, 0]


def test_state_dict_layout_and_round_trip():
    e, t, eo, to = run(lambda p: et.optim.Adam(p, lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2),
                       steps=3)
    sd, tsd = eo.state_dict(), to.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"]) == [0, 1, 2, 3]
    assert set(sd["state"][0]) == set(tsd["state"][0])
    assert sd["param_groups"][0]["params"] == tsd["param_groups"][0]["params"]
    for k in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
        assert sd["param_groups"][0][k] == tsd["param_groups"][0][k]
    assert float(sd["state"][0]["step"]) == float(tsd["state"][0]["step"]) == 3.0
    # round trip: a fresh optimizer continues exactly like the original
    snapshot = copy.deepcopy(sd)
    e2 = copy.deepcopy(e)
    eo2 = et.optim.Adam(e2.parameters(), lr=0.5)
    eo2.load_state_dict(snapshot)
    assert eo2.param_groups[0]["lr"] == 1e-2
    for s in range(3, 6):
        grads_step(e, t, s)
        for p2, p in zip(e2.parameters(), e.parameters()):
            p2.grad = et.tensor(p.grad.numpy())
        eo.step()
        eo2.step()
        to.step()
    for p2, p, tp in zip(e2.parameters(), e.parameters(), t.parameters()):
        assert np.array_equal(p2.detach().numpy(), p.detach().numpy())
        assert rel(p.detach().numpy(), tp.detach().numpy()) <= RTOL
    # a torch optimizer's state_dict loads directly
    eo3 = et.optim.Adam(copy.deepcopy(e).parameters(), lr=1.0)
    eo3.load_state_dict(to.state_dict())
    assert float(eo3.state_dict()["state"][1]["step"]) == 6.0


def test_sgd_momentum_state_dict():
    e, t, eo, to = run(lambda p: et.optim.SGD(p, lr=0.1, momentum=0.9),
                       lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), steps=2)
    sd, tsd = eo.state_dict(), to.state_dict()
    for i in range(4):
        np.testing.assert_allclose(sd["state"][i]["momentum_buffer"],
                                   tsd["state"][i]["momentum_buffer"].numpy(), rtol=1e-6)
    eo_plain = et.optim.SGD(e.parameters(), lr=0.1)
    grads_step(e, t, 0)
    eo_plain.step()
    assert eo_plain.state_dict()["state"] == {}      # no momentum: no state, like torch


def test_zero_grad_and_validation():
    e, _ = models()
    opt = et.optim.SGD(e.parameters(), lr=0.1)
    e(et.randn(2, 6)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all(float(np.abs(p.grad.numpy()).max()) == 0 for p in e.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in e.parameters())
    opt.step()                                       # no grads: a no-op
    with pytest.raises(ValueError, match="Nesterov"):
        et.optim.SGD(e.parameters(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        et.optim.SGD(e.parameters(), lr=-1)
    with pytest.raises(ValueError, match="beta"):
        et.optim.Adam(e.parameters(), betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty parameter list"):
        et.optim.Adam([])
    # generators work (parameters() is one)
    assert len(et.optim.Adam(e.parameters()).param_groups[0]["params"]) == 4
