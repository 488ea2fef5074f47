"""fp16 loss scaler skips and recovers (issue 3: dynamic loss scaling for fp16).

- The scale sequence, skip decisions, unscaled grads and parameters match
  torch.amp.GradScaler("cpu") step for step (both fed torch's gradients, with
  inf / NaN injected at chosen steps, two optimizers, explicit unscale_,
  update(new_scale), odd factors, a growth that would overflow float32).
- A real fp16 overflow: LeNet under et.precision("fp16") with init_scale 2^24;
  the scaled gradient operands overflow half (65504) though not float32, so the
  first steps are skipped (parameters and optimizer state bit-identical) while
  the scale halves, then training proceeds and the loss falls.
- The underflow the scaler exists for: a nearly converged regression whose
  fp16 dy operands flush to zero (weight grad exactly 0) without scaling and
  give the fp32-accurate weight grad with it.
- unscale_ + clipping + step, the RuntimeErrors torch raises, enabled=False,
  state_dict round trips (also with torch), argument checks.
"""
import copy
import math
import pickle

import numpy as np
import pytest

import edgetrain as et

torch = pytest.importorskip("torch")

FP16_MAX = 65504.0


@pytest.fixture(autouse=True)
def _restore_policy():
    prev = et.get_precision()
    et.set_precision("fp32")
    yield
    et.set_precision(prev)


def _counting(step):
    """Wraps optimizer.step to count the calls the scaler lets through."""
    def wrapped(*args, **kwargs):
        wrapped.calls += 1
        return step(*args, **kwargs)
    wrapped.calls = 0
    return wrapped


def _rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def _cos(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


# ---------------------------------------------------------------------------
# 1. parity with torch.amp.GradScaler
def _pair_models():
    torch.manual_seed(0)
    t = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    e = et.nn.Sequential(et.nn.Linear(4, 5), et.nn.ReLU(), et.nn.Linear(5, 3))
    e.load_state_dict({k: v.detach() for k, v in t.state_dict().items()})
    return e, t


SCENARIOS = {
    # powers of two; inf / NaN in one optimizer's grads only; growth every 3
    "pow2": dict(kw=dict(init_scale=2.0 ** 10, growth_interval=3), steps=16,
                 inject={1: [(0, math.inf)], 2: [(3, math.nan)], 6: [(1, -math.inf)],
                         11: [(0, math.nan), (2, math.inf)]},
                 unscale={3, 4, 11}, new_scale={9: 300.0}),
    # factors whose products round in float32
    "odd": dict(kw=dict(init_scale=1000.3, growth_factor=1.7, backoff_factor=0.35,
                        growth_interval=2), steps=14,
                inject={0: [(2, math.inf)], 5: [(1, math.nan)], 6: [(3, -math.inf)]},
                unscale={5}, new_scale={}),
    # 2^30 * 2^100 overflows float32: the growth is dropped, the tracker reset
    "cap": dict(kw=dict(init_scale=2.0 ** 30, growth_factor=2.0 ** 100, growth_interval=1),
                steps=4, inject={}, unscale=set(), new_scale={}),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scale_sequence_matches_torch(name):
    sc = SCENARIOS[name]
    e, t = _pair_models()
    ep, tp = list(e.parameters()), list(t.parameters())
    # two optimizers (layer 0 plain SGD, layer 2 with momentum): a skip is per optimizer,
    # the backoff is shared
    eopts = [et.optim.SGD(ep[:2], lr=0.1), et.optim.SGD(ep[2:], lr=0.1, momentum=0.9)]
    topts = [torch.optim.SGD(tp[:2], lr=0.1), torch.optim.SGD(tp[2:], lr=0.1, momentum=0.9)]
    for o in eopts + topts:
        o.step = _counting(o.step)
    es = et.amp.GradScaler(**sc["kw"])
    ts = torch.amp.GradScaler("cpu", **sc["kw"])
    assert es.get_scale() == ts.get_scale()
    scales, skipped = [], []
    for s in range(sc["steps"]):
        rng = np.random.default_rng(s)
        x = rng.standard_normal((6, 4)).astype(np.float32)
        y = rng.integers(0, 3, 6)
        for o in eopts + topts:
            o.zero_grad()
        tl = ts.scale(torch.nn.functional.cross_entropy(t(torch.tensor(x)), torch.tensor(y)))
        tl.backward()
        el = es.scale(et.nn.functional.cross_entropy(e(et.tensor(x)), et.tensor(y)))
        el.backward()
        assert abs(el.item() - tl.item()) <= 1e-5 * abs(tl.item()), s
        for p, q in zip(ep, tp):         # edgetrain's own backward of the scaled loss
            assert _rel(p.grad.numpy(), q.grad.numpy()) <= 1e-5, s
            # ... then the same grads in both, to isolate the scaler
            p.grad = et.tensor(q.grad.numpy().copy())
        for i, v in sc["inject"].get(s, []):
            ep[i].grad._data.flat[0] = v
            tp[i].grad.view(-1)[0] = v
        if s in sc["unscale"]:
            es.unscale_(eopts[0])
            ts.unscale_(topts[0])
        calls = [o.step.calls for o in eopts + topts]
        for eo, to in zip(eopts, topts):
            assert es.step(eo) is None and ts.step(to) is None   # SGD.step returns None
        now = [o.step.calls for o in eopts + topts]
        did = [b - a for a, b in zip(calls, now)]
        assert did[:2] == did[2:], f"step {s}: skip decisions differ (et, torch) {did}"
        skipped.append(tuple(1 - d for d in did[:2]))
        for i, (p, q) in enumerate(zip(ep, tp)):
            # unscaled in place by the same float32 multiply: bit for bit
            assert np.array_equal(p.grad.numpy(), q.grad.numpy(), equal_nan=True), (s, i)
            err = _rel(p.detach().numpy(), q.detach().numpy())
            assert err <= 1e-6, f"step {s} param {i}: relative error {err:.3g}"
        if s in sc["new_scale"]:
            es.update(sc["new_scale"][s])
            ts.update(sc["new_scale"][s])
        else:
            es.update()
            ts.update()
        assert es.get_scale() == ts.get_scale(), (s, es.get_scale(), ts.get_scale())
        assert es._get_growth_tracker() == ts._get_growth_tracker(), s
        scales.append(es.get_scale())
    assert es.state_dict() == ts.state_dict()
    # the scenario did what it is for
    if name == "cap":
        assert scales == [2.0 ** 30] * sc["steps"] and not any(map(any, skipped))
    else:
        n_skip = sum(map(any, skipped))
        assert n_skip == len(sc["inject"]), skipped
        assert any(b > a for a, b in zip(scales, scales[1:])), f"no growth: {scales}"
        assert any(b < a for a, b in zip(scales, scales[1:])), f"no backoff: {scales}"


# ---------------------------------------------------------------------------
# 2. real fp16 overflow and underflow
def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (et.tensor(rng.standard_normal((n, 1, 28, 28)).astype(np.float32)),
            et.tensor(rng.integers(0, 10, n)))


def _finite_grads(params):
    return all(np.isfinite(p.grad.numpy()).all() for p in params if p.grad is not None)


@pytest.mark.parametrize("backend", et.backends())
def test_fp16_overflow_skips_then_recovers(backend):
    et.manual_seed(0)
    model = et.models.lenet()
    crit = et.nn.CrossEntropyLoss()
    x, y = _batch()
    init = 2.0 ** 24
    params = list(model.parameters())
    with et.backend(backend):
        # control: the same scale in the fp32 path keeps every grad finite, so the
        # infs below come from fp16 operands (|v| >= 65520), not from float32
        ctl = copy.deepcopy(model)
        (crit(ctl(x), y) * init).backward()
        assert _finite_grads(ctl.parameters())
        big = max(np.abs(p.grad.numpy()).max() for p in ctl.parameters())
        assert big > FP16_MAX, f"scaled fp32 grads peak at {big}: no fp16 overflow to test"

        opt = et.optim.SGD(params, lr=0.05, momentum=0.9)
        opt.step = _counting(opt.step)
        scaler = et.amp.GradScaler(init_scale=init, growth_interval=1000)
        losses, skips = [], []
        for s in range(20):
            opt.zero_grad()
            with et.precision("fp16"):
                loss = crit(model(x), y)
            scaler.scale(loss).backward()
            overflow = not _finite_grads(params)       # the scaled grads, before step
            before = [p.detach().numpy().copy() for p in params]
            state = copy.deepcopy(opt.state_dict()["state"])
            scale, calls = scaler.get_scale(), opt.step.calls
            ret = scaler.step(opt)
            scaler.update()
            if overflow:
                assert ret is None and opt.step.calls == calls, s
                assert all(np.array_equal(a, p.detach().numpy()) for a, p in zip(before, params))
                st = opt.state_dict()["state"]
                assert st.keys() == state.keys() and all(
                    np.array_equal(st[k]["momentum_buffer"], state[k]["momentum_buffer"])
                    for k in st), f"step {s}: optimizer state changed on a skipped step"
                assert scaler.get_scale() == scale * 0.5, s
            else:
                assert opt.step.calls == calls + 1, s
                assert any(not np.array_equal(a, p.detach().numpy())
                           for a, p in zip(before, params)), s
                assert scaler.get_scale() == scale, s
            skips.append(overflow)
            losses.append(loss.item())
    assert skips[0], "init_scale 2^24 should overflow fp16 at the first step"
    k = skips.index(False)
    assert not any(skips[k:k + 5]), f"no recovery after the first good step: {skips}"
    assert scaler.get_scale() <= init * 0.5 ** k
    assert sum(not sk for sk in skips) >= 10, skips
    assert losses[-1] < 0.5 * losses[k], f"loss did not fall: {losses}"
    assert all(np.isfinite(p.detach().numpy()).all() for p in params)


@pytest.mark.parametrize("backend", et.backends())
def test_fp16_underflow_needs_scaling(backend):
    """Nearly converged regression: residuals ~2e-6, MSE over 16x64 outputs, so
    dy = 2 r / 1024 stays below 2^-25 and rounds to 0 in half: the fp16 weight
    grad is exactly zero. With the default scale (2^16) dy is a normal half and
    the unscaled grad matches the exact one."""
    et.manual_seed(0)
    rng = np.random.default_rng(0)
    lin = et.nn.Linear(32, 64)
    x = et.tensor(rng.standard_normal((16, 32)).astype(np.float32))
    with et.backend(backend):
        with et.no_grad(), et.precision("fp16"):
            out = lin(x).numpy()
        target = et.tensor((out + 2e-6 * rng.standard_normal(out.shape)).astype(np.float32))
        # the exact weight grad of this loss at the fp16 forward's output
        dy = 2.0 * (out.astype(np.float64) - target.numpy()) / out.size
        assert np.abs(dy).max() < 2.0 ** -25            # below half's rounding to 0
        ref = dy.T @ x.numpy().astype(np.float64)
        opt = et.optim.SGD(lin.parameters(), lr=1.0)
        grads = {}
        for mode in ("plain", "scaled"):
            opt.zero_grad()
            with et.precision("fp16"):
                pred = lin(x)
                loss = et.nn.functional.mse_loss(pred, target)
            assert np.array_equal(pred.detach().numpy(), out)   # deterministic forward
            if mode == "plain":
                loss.backward()
            else:
                scaler = et.amp.GradScaler()
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            grads[mode] = lin.weight.grad.numpy().copy()
    assert np.count_nonzero(grads["plain"]) == 0, "expected the fp16 weight grad to flush"
    assert _cos(grads["scaled"], ref) > 0.9999
    assert _rel(grads["scaled"], ref) < 1e-2


# ---------------------------------------------------------------------------
# 3. API behaviour
def _tiny(seed=0):
    et.manual_seed(seed)
    lin = et.nn.Linear(3, 2)
    rng = np.random.default_rng(seed)
    x = et.tensor(rng.standard_normal((4, 3)).astype(np.float32))
    return lin, x


def test_unscale_then_clip_then_step():
    lin, x = _tiny()
    opt = et.optim.SGD(lin.parameters(), lr=0.1)
    scaler = et.amp.GradScaler(init_scale=1024.0)
    y = lin(x)
    scaler.scale((y * y).sum()).backward()
    scaled = [p.grad.numpy().copy() for p in lin.parameters()]
    scaler.unscale_(opt)
    for p, g in zip(lin.parameters(), scaled):
        assert np.array_equal(p.grad.numpy(), g * np.float32(1 / 1024.0))
    # clip the unscaled grads to a global norm of 0.5 (clip_grad_norm_'s rule)
    norm = math.sqrt(sum(float((p.grad.numpy().astype(np.float64) ** 2).sum())
                         for p in lin.parameters()))
    assert norm > 0.5
    for p in lin.parameters():
        p.grad._data *= np.float32(0.5 / norm)
    clipped = [p.grad.numpy().copy() for p in lin.parameters()]
    before = [p.detach().numpy().copy() for p in lin.parameters()]
    scaler.step(opt)                      # must not unscale a second time
    for p, g, b in zip(lin.parameters(), clipped, before):
        assert np.array_equal(p.grad.numpy(), g)
        np.testing.assert_allclose(p.detach().numpy(), b - np.float32(0.1) * g, rtol=1e-6)
    scaler.update()
    assert scaler.get_scale() == 1024.0


def test_stage_errors():
    lin, x = _tiny()
    opt = et.optim.SGD(lin.parameters(), lr=0.1)
    scaler = et.amp.GradScaler()
    for call in (lambda: scaler.unscale_(opt), lambda: scaler.step(opt), scaler.update):
        with pytest.raises(RuntimeError, match="scale\\(\\) was never called"):
            call()
    loss = scaler.scale(lin(x).sum())
    with pytest.raises(RuntimeError, match="none of its parameters has a .grad"):
        scaler.step(opt)                  # backward() forgotten
    loss.backward()
    with pytest.raises(RuntimeError, match="no inf checks were recorded"):
        scaler.update()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(opt, closure=lambda: None)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(opt)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) is being called after step"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="pickled"):
        pickle.dumps(scaler)
    scaler.update()                       # a new iteration: all allowed again
    opt.zero_grad()
    scaler.scale(lin(x).sum()).backward()
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()


def test_scale_outputs():
    lin, x = _tiny()
    scaler = et.amp.GradScaler(init_scale=8.0)
    y = lin(x)
    a, b = y.sum(), (y * y).mean()
    out = scaler.scale([a, (b, [a])])
    assert type(out) is list and type(out[1]) is tuple and type(out[1][1]) is list
    assert out[0].item() == a.item() * 8 and out[1][0].item() == b.item() * 8
    assert out[0].dtype == "float32"
    out[0].backward()
    np.testing.assert_allclose(lin.bias.grad.numpy(), [32.0, 32.0])  # 4 rows x 8
    assert [t.item() for t in scaler.scale(iter([a, b]))] == [a.item() * 8, b.item() * 8]
    for bad in (3.0, "loss", [a, None], np.ones(2)):
        with pytest.raises(ValueError, match="outputs must be a Tensor"):
            scaler.scale(bad)


def test_disabled_is_pass_through():
    lin, x = _tiny()
    opt = et.optim.SGD(lin.parameters(), lr=0.1)
    opt.step = _counting(opt.step)
    scaler = et.amp.GradScaler(enabled=False)
    assert not scaler.is_enabled() and scaler.get_scale() == 1.0
    loss = lin(x).sum()
    assert scaler.scale(loss) is loss
    loss.backward()
    lin.weight.grad._data[0, 0] = np.inf
    grads = [p.grad.numpy().copy() for p in lin.parameters()]
    scaler.unscale_(opt)
    scaler.unscale_(opt)                  # no stage bookkeeping either
    for p, g in zip(lin.parameters(), grads):
        assert np.array_equal(p.grad.numpy(), g)
    assert scaler.step(opt) is None and opt.step.calls == 1   # not skipped, even on inf
    scaler.update()
    scaler.update(5.0)
    assert scaler.get_scale() == 1.0 and scaler.state_dict() == {}
    scaler.load_state_dict({})            # a no-op when disabled
    ref = torch.amp.GradScaler("cpu", enabled=False)
    assert ref.state_dict() == {} and ref.get_scale() == 1.0


def _run(scaler, steps, inf_at=()):
    lin, x = _tiny()
    opt = et.optim.SGD(lin.parameters(), lr=0.1)
    for s in range(steps):
        opt.zero_grad()
        scaler.scale(lin(x).sum()).backward()
        if s in inf_at:
            lin.bias.grad._data[0] = np.nan
        scaler.step(opt)
        scaler.update()
    return scaler


def test_state_dict_round_trip():
    kw = dict(init_scale=256.0, growth_factor=4.0, backoff_factor=0.25, growth_interval=3)
    a = _run(et.amp.GradScaler(**kw), 5, inf_at=(0,))
    sd = a.state_dict()
    assert sd == {"scale": 64.0 * 4.0, "growth_factor": 4.0, "backoff_factor": 0.25,
                  "growth_interval": 3, "_growth_tracker": 1}
    assert type(sd["scale"]) is float and type(sd["_growth_tracker"]) is int
    b = et.amp.GradScaler()
    b.load_state_dict(sd)
    assert b.state_dict() == sd
    # loading into a scaler that has already scaled also replaces its live scale
    c = _run(et.amp.GradScaler(), 1)
    c.load_state_dict(sd)
    assert c.state_dict() == sd
    d = pickle.loads(pickle.dumps(a))
    assert d.state_dict() == sd
    # the same continuation from every copy (next growth after 2 more good steps)
    for s in (a, b, c, d):
        _run(s, 2)
        assert s.get_scale() == 1024.0 and s._get_growth_tracker() == 0
    # and with torch's state dicts, both ways
    t = torch.amp.GradScaler("cpu")
    t.load_state_dict(sd)
    assert t.state_dict() == sd
    e = et.amp.GradScaler()
    e.load_state_dict(torch.amp.GradScaler("cpu", **kw).state_dict())
    assert e.state_dict() == {"scale": 256.0, "growth_factor": 4.0, "backoff_factor": 0.25,
                              "growth_interval": 3, "_growth_tracker": 0}
    with pytest.raises(RuntimeError, match="state dict is empty"):
        e.load_state_dict({})
    bad = dict(sd)
    del bad["_growth_tracker"]
    with pytest.raises(RuntimeError, match="missing key.*'_growth_tracker'"):
        e.load_state_dict(bad)
    with pytest.raises(ValueError, match="backoff_factor"):
        e.load_state_dict(dict(sd, backoff_factor=2.0))
    assert e.get_backoff_factor() == 0.25          # a failed load changes nothing


@pytest.mark.parametrize("kw, name", [
    (dict(init_scale=0.0), "init_scale"), (dict(init_scale=-1.0), "init_scale"),
    (dict(init_scale=math.inf), "init_scale"), (dict(init_scale=math.nan), "init_scale"),
    (dict(init_scale=1e39), "init_scale"), (dict(init_scale="big"), "init_scale"),
    (dict(growth_factor=1.0), "growth_factor"), (dict(growth_factor=0.5), "growth_factor"),
    (dict(growth_factor=math.inf), "growth_factor"),
    (dict(backoff_factor=1.0), "backoff_factor"), (dict(backoff_factor=0.0), "backoff_factor"),
    (dict(backoff_factor=-0.5), "backoff_factor"),
    (dict(growth_interval=0), "growth_interval"), (dict(growth_interval=2.5), "growth_interval"),
    (dict(growth_interval=True), "growth_interval"),
    (dict(device="cuda"), "device"), (dict(device=1024.0), "device"),
])
def test_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        et.amp.GradScaler(**kw)


def test_bad_setter_and_update_arguments():
    s = et.amp.GradScaler()
    with pytest.raises(ValueError, match="growth_factor"):
        s.set_growth_factor(0.9)
    with pytest.raises(ValueError, match="backoff_factor"):
        s.set_backoff_factor(1.5)
    with pytest.raises(ValueError, match="growth_interval"):
        s.set_growth_interval(-3)
    assert (s.get_growth_factor(), s.get_backoff_factor(), s.get_growth_interval()) == \
        (2.0, 0.5, 2000)
    s.set_growth_factor(3.0)
    s.set_backoff_factor(0.125)
    s.set_growth_interval(7)
    assert (s.get_growth_factor(), s.get_backoff_factor(), s.get_growth_interval()) == \
        (3.0, 0.125, 7)
    _run(s, 1)
    for bad in (0.0, -2.0, math.inf, "x"):
        with pytest.raises(ValueError, match="new_scale"):
            s.update(bad)
    s.update(et.tensor(3.0))               # a 1-element tensor, as torch accepts
    assert s.get_scale() == 3.0


def test_unscale_edge_cases():
    lin, x = _tiny()
    w, b = lin.weight, lin.bias
    opt = et.optim.SGD(lin.parameters(), lr=0.1)
    scaler = et.amp.GradScaler(init_scale=4.0)
    scaler.scale(lin(x).sum()).backward()
    # a float16 grad: ValueError naming it, and no grad divided
    b.grad = et.Tensor._wrap(b.grad.numpy().astype(np.float16))
    wg = w.grad.numpy().copy()
    with pytest.raises(ValueError, match="FP16 gradients.*\\['params'\\]\\[1\\]"):
        scaler.unscale_(opt)
    assert np.array_equal(w.grad.numpy(), wg)
    # one array shared by two grads is divided once; a read-only grad is replaced
    shared = et.tensor(np.full((2,), 8.0, np.float32))
    b.grad = shared
    ro = np.full((2, 3), 8.0, np.float32)
    ro.flags.writeable = False
    w.grad = et.Tensor._wrap(ro)
    lin2 = et.nn.Linear(3, 2)
    lin2.bias.grad = shared
    opt2 = et.optim.SGD([w, b, lin2.bias], lr=0.1)
    scaler.unscale_(opt2)
    assert np.array_equal(shared.numpy(), [2.0, 2.0]) and lin2.bias.grad is shared
    assert np.array_equal(w.grad.numpy(), np.full((2, 3), 2.0)) and ro[0, 0] == 8.0
    with pytest.raises(RuntimeError, match="Closure use"):
        scaler.step(opt2, lambda: None)
    scaler.step(opt2)
    scaler.update()
    # scale < 1: a finite scaled grad that overflows float32 once unscaled is
    # caught (torch checks before unscaling and would step on the inf)
    scaler.update(0.5)
    opt2.zero_grad()
    scaler.scale(lin(x).sum()).backward()
    w.grad._data[0, 0] = 3e38
    before = w.detach().numpy().copy()
    assert scaler.step(opt2) is None
    assert np.array_equal(w.detach().numpy(), before)
    scaler.update()
    assert scaler.get_scale() == 0.25
