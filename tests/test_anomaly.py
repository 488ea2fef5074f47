"""Anomaly detection (issue 6, item 5): NaN / Inf are reported by the op that
made them (edgetrain/anomaly.py).

Forward: a NaN from the log of a negative number and an Inf from a division
by zero inside small models are named by that op (Log, Div), not by a later
one, with the output shape, the counts and the first bad index; NaN data and a
non-finite parameter are named as inputs. Backward: an Inf gradient made by a
backward (Sqrt at 0, a user Function), an overflowed sum of gradients and a
bad gradient passed to backward() are named. Off (the default): no exception,
the checks are never called. int8: with detection on, the producer is named
instead of the quantizer that refuses the NaN; the dynamic int8 quantizers
cannot saturate (checked here over extreme inputs, against a static scale
that does). fp16: an operand overflow is named. The overhead on a LeNet
batch-64 training step is measured and printed (no timing assertion).
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import edgetrain as et
import edgetrain._C as C
from edgetrain import autograd
from edgetrain.autograd import Function
from edgetrain.errors import AnomalyError, EdgetrainError

THIS_FILE = "test_anomaly.py"


@pytest.fixture(autouse=True)
def _anomaly_off_after():
    yield
    et.set_anomaly_detection(False)


class TinyNet(et.nn.Module):
    """linear -> `mid` (the op under test) -> linear -> mean: a NaN / Inf made in
    `mid` flows into a later Linear and the loss, which must not be named."""

    def __init__(self, mid):
        super().__init__()
        et.manual_seed(3)
        self.fc1 = et.nn.Linear(4, 6)
        self.fc2 = et.nn.Linear(6, 2)
        self.mid = mid

    def forward(self, x):
        return self.fc2(self.mid(self.fc1(x))).mean()


def _x(seed=0, n=5):
    return et.tensor(np.random.default_rng(seed).standard_normal((n, 4)))


# ---------------------------------------------------------------------------
# the switch
def test_off_by_default_and_the_switches():
    assert et.is_anomaly_enabled() is False
    et.set_anomaly_detection(True)
    assert et.is_anomaly_enabled() and et.autograd.is_anomaly_enabled()
    et.set_anomaly_detection(False)
    with et.autograd.detect_anomaly():
        assert et.is_anomaly_enabled()
        with et.autograd.detect_anomaly(check_nan=False):
            assert not et.is_anomaly_enabled()
        assert et.is_anomaly_enabled()
    assert not et.is_anomaly_enabled()
    et.autograd.set_detect_anomaly(True)               # a call sets it ...
    assert et.is_anomaly_enabled()
    with et.autograd.set_detect_anomaly(False):        # ... a with-block restores it
        assert not et.is_anomaly_enabled()
    assert et.is_anomaly_enabled()
    et.set_anomaly_detection(False)

    @et.autograd.detect_anomaly()
    def f():
        return et.is_anomaly_enabled()
    assert f() and not et.is_anomaly_enabled()
    with pytest.raises(TypeError, match="must be a bool"):
        et.set_anomaly_detection("yes")
    assert issubclass(AnomalyError, EdgetrainError) and issubclass(AnomalyError, RuntimeError)
    assert et.AnomalyError is AnomalyError


# ---------------------------------------------------------------------------
# forward
def test_nan_from_log_of_a_negative_number_names_log():
    net = TinyNet(lambda h: h.log())                # fc1's output has negative values
    with et.autograd.detect_anomaly():
        with pytest.raises(AnomalyError) as ei:
            net(_x())
    msg = str(ei.value)
    assert msg.startswith("Log (forward) produced")
    assert "NaN" in msg and "shape (5, 6)" in msg and "first at index (" in msg
    assert "its inputs are finite" in msg and THIS_FILE in msg          # the calling line
    assert "Linear" not in msg                      # not the later fc2 that also sees it
    # the counts are right
    h = net.fc1(_x())._data
    assert f"{int((h < 0).sum())} NaN, 0 Inf of 30 values" in msg


def test_inf_from_division_by_zero_names_div():
    def mid(h):
        d = h - h.detach()                             # exactly zero, in the graph
        return h / d
    net = TinyNet(mid)
    with et.autograd.detect_anomaly():
        with pytest.raises(AnomalyError, match=r"^Div \(forward\) produced \d+ NaN, \d+ Inf "
                                               r"of 30 values \(shape \(5, 6\)"):
            net(_x(1))
    # off: no exception, the loss is silently non-finite (what detection is for)
    loss = net(_x(1))
    assert not np.isfinite(loss.item())


def test_minus_inf_from_log_of_zero_names_log():
    net = TinyNet(lambda h: h.relu().log())          # relu's zeros -> log(0) = -inf
    h = net.fc1(_x())._data
    with et.autograd.detect_anomaly(), pytest.raises(
            AnomalyError, match=rf"^Log \(forward\) produced 0 NaN, {int((h <= 0).sum())} Inf "):
        net(_x())


def test_the_finiteness_test_itself():
    from edgetrain.anomaly import _finite
    big = np.full(1000, 3e38, np.float32)               # finite; its squares overflow
    assert _finite(big) and _finite(np.zeros(0, np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        for dt in (np.float32, np.float64, np.float16):
            a = np.ones((7, 9), dt)
            a[5, 3] = bad
            assert not _finite(a) and not _finite(a.T)   # contiguous and a strided view
            assert _finite(a[:5])
    assert not _finite(np.broadcast_to(np.float32(-np.inf), (4, 4)))


def test_nan_in_the_data_is_named_as_an_input_of_the_first_op():
    x = _x(2)
    x._data[3, 1] = np.nan
    net = TinyNet(lambda h: h.relu())
    with et.autograd.detect_anomaly(), pytest.raises(AnomalyError) as ei:
        net(x)
    msg = str(ei.value)
    assert msg.startswith("input of Linear already non-finite: its input 0 (a leaf tensor")
    assert "1 NaN, 0 Inf of 20 values (shape (5, 4), first at index (3, 1)" in msg


def test_a_nonfinite_parameter_is_named():
    net = TinyNet(lambda h: h.relu())
    with et.no_grad():
        net.fc2.weight._data[1, 2] = np.inf            # e.g. an optimizer step that overflowed
    with et.autograd.detect_anomaly(), pytest.raises(
            AnomalyError, match=r"input of Linear already non-finite: its input 1 \(a Parameter "
                                r"of shape \(2, 6\)\) holds 0 NaN, 1 Inf"):
        net(_x())


def test_nonfinite_input_made_outside_the_checked_ops_is_named_as_input():
    a = et.tensor([1.0, -1.0], requires_grad=True)
    y = a * 2.0                                        # made with detection off ...
    y._data[0] = np.nan                                # ... then corrupted in place
    with et.autograd.detect_anomaly(), pytest.raises(
            AnomalyError, match=r"input of Exp already non-finite: its input 0 \(made by "
                                r"MulBackward0"):
        y.exp()


# ---------------------------------------------------------------------------
# backward
def _sqrt_of_zero(h):
    """sqrt(0) = 0 in forward (finite), but its gradient 1 / (2 sqrt(0)) is Inf and
    flows on into h (relu would mask it: its backward selects, not multiplies)."""
    return (h - h.detach()).sqrt() + h


def test_inf_gradient_from_sqrt_at_zero_names_sqrt_backward():
    net = TinyNet(_sqrt_of_zero)
    with et.autograd.detect_anomaly():
        loss = net(_x())
        assert np.isfinite(loss.item())
        with pytest.raises(AnomalyError) as ei:
            loss.backward()
    msg = str(ei.value)
    assert msg.startswith("Sqrt.backward produced 0 NaN, ")
    assert "Inf" in msg and "in the gradient of its input 0" in msg and "shape (5, 6)" in msg
    assert "from a finite incoming gradient" in msg
    assert "the forward Sqrt was called at" in msg and THIS_FILE in msg
    # off: backward runs through and leaves NaN / Inf in the parameters' grads
    net.zero_grad()
    net(_x()).backward()
    assert not np.isfinite(net.fc1.weight.grad._data).all()


class _BadBackward(Function):
    """identity whose backward divides by zero (a user-written op's bug)."""
    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, g):
        with np.errstate(divide="ignore", invalid="ignore"):
            return g / np.zeros_like(g)


def test_user_function_backward_is_named():
    net = TinyNet(lambda h: _BadBackward.apply(h))
    with et.autograd.detect_anomaly():
        loss = net(_x())
        with pytest.raises(AnomalyError, match=r"^BadBackward\.backward produced "):
            loss.backward()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_overflowed_sum_of_gradients_is_named():
    x = et.tensor([1.0, 2.0], requires_grad=True)
    with et.autograd.detect_anomaly():
        a = x * 2.0                          # two consumers: its gradient is the sum of two
        out = a * 1.0 + a * 1.0              # finite gradients 3e38 + 3e38 = inf in float32
        with pytest.raises(AnomalyError, match=r"the gradient reaching Mul\.backward is "
                                               r"non-finite \(the sum of the finite gradients"):
            out.backward(et.full((2,), 3e38))


def test_nonfinite_gradient_passed_to_backward_is_named():
    x = et.tensor([1.0, 2.0], requires_grad=True)
    with et.autograd.detect_anomaly():
        y = x.exp()
        with pytest.raises(AnomalyError, match=r"reaching Exp\.backward is non-finite \(the "
                                               r"gradient passed to backward\(\)\)"):
            y.backward(et.tensor([1.0, np.nan]))


# ---------------------------------------------------------------------------
# off: no exception and no checks beyond the boolean
def test_off_never_calls_the_checks(monkeypatch):
    calls = []
    monkeypatch.setattr(autograd, "_anomaly_forward", lambda *a: calls.append("f"))
    monkeypatch.setattr(autograd, "_anomaly_backward", lambda *a: calls.append("b"))
    net = TinyNet(lambda h: h.log())
    loss = net(_x())                                   # NaN, and no exception
    loss.backward()
    assert not np.isfinite(loss.item()) and calls == []
    et.set_anomaly_detection(True)                     # the same hooks run when on
    net(_x()).backward()
    assert "f" in calls and "b" in calls


# ---------------------------------------------------------------------------
# low precision
def test_int8_names_the_producer_not_the_quantizer():
    net = TinyNet(lambda h: h.log())
    with et.precision("int8"):
        # off: the quantizer of fc2's input refuses the NaN, naming itself
        with pytest.raises(ValueError, match="quantize_per_tensor: input contains NaN/Inf"):
            net(_x())
        with et.autograd.detect_anomaly(), pytest.raises(
                AnomalyError, match=r"^Log \(forward\) produced"):
            net(_x())


def test_int8_backward_names_the_producer_not_the_stochastic_quantizer():
    net = TinyNet(_sqrt_of_zero)
    with et.precision("int8"):
        with pytest.raises(ValueError, match="quantize_stochastic: input contains NaN/Inf"):
            net(_x()).backward()                       # fc1's backward quantizes dy
        with et.autograd.detect_anomaly():
            loss = net(_x())
            with pytest.raises(AnomalyError, match=r"^Sqrt\.backward produced"):
                loss.backward()


def test_int8_conv_model_names_the_producer():
    et.manual_seed(4)
    conv1, conv2 = et.nn.Conv2d(1, 3, 3), et.nn.Conv2d(3, 2, 3)
    x = et.randn(2, 1, 7, 7)
    with et.precision("int8"), et.autograd.detect_anomaly(), pytest.raises(
            AnomalyError, match=r"^Log \(forward\) produced \d+ NaN, 0 Inf of 150 values "
                                r"\(shape \(2, 3, 5, 5\)"):
        conv2(conv1(x).log())


def _extremes(seed):
    """float32 tensors with a wide dynamic range, outliers and edge values."""
    r = np.random.default_rng(seed)
    yield r.standard_normal(1000).astype(np.float32)
    yield (r.standard_cauchy(5000) * 1e3).astype(np.float32)           # heavy tails
    yield np.array([3.4e38, -3.4e38, 1.0, -1e-30, 0.0], np.float32)    # near FLT_MAX
    yield np.array([1e-39, -2e-40, 5e-45, 0.0], np.float32)            # subnormal: floor scale
    yield (r.random(777) * 1e-3).astype(np.float32) * np.float32(1.0000001)


@pytest.mark.parametrize("qmax", [63, 127])
def test_dynamic_int8_quantizers_cannot_saturate(qmax):
    """max-abs scales: every value, the extremes included, is within half a
    quantization step (deterministic) or one step (stochastic), so no value is
    clipped by the [-qmax, qmax] clamp (edgetrain/anomaly.py explains why)."""
    for i, x in enumerate(_extremes(qmax)):
        x64 = x.astype(np.float64)
        q, s = C.quantize_per_tensor(x, "int8", qmax=qmax)
        err = np.abs(q.astype(np.float64) * s - x64)
        assert err.max() <= s * (0.5 + 1e-5), (i, err.max() / s)
        qs, ss = C.quantize_stochastic(x, 11, 0, qmax=qmax)
        assert (np.abs(qs.astype(np.float64) * ss - x64) < ss * (1 + 1e-5)).all(), i
        xp = np.abs(x)                                    # the u8 path: non-negative tensors
        qu, su = C.quantize_per_tensor(xp, "uint8", qmax=2 * qmax + 1)
        assert (np.abs(qu.astype(np.float64) * su - xp) <= su * (0.5 + 1e-5)).all(), i
    w = np.stack([x[:4] for x in _extremes(qmax)])          # per output channel
    qw, sw = C.quantize_per_channel(w)
    assert (np.abs(qw * sw[:, None].astype(np.float64) - w) <= sw[:, None] * (0.5 + 1e-5)).all()


def test_a_static_scale_does_saturate_so_the_check_above_can_fail():
    x = np.array([0.5, 1.0, 5.0], np.float32)
    q, s = C.quantize_per_tensor(x, "int8", scale=0.01)    # 5.0 / 0.01 = 500 > 127
    assert np.abs(q.astype(np.float64) * s - x).max() > s * 0.5


def test_fp16_operand_overflow_is_named():
    et.manual_seed(5)
    lin = et.nn.Linear(3, 2)
    x = et.tensor([[1e5, 2.0, 3.0]])                        # > 65504: Inf in half
    with et.precision("fp16"):
        assert not np.isfinite(lin(x)._data).all()         # off: silently Inf
        with et.autograd.detect_anomaly(), pytest.raises(
                AnomalyError, match=r"^Linear \(forward\) produced 0 NaN, 2 Inf"):
            lin(x)


# ---------------------------------------------------------------------------
# overhead (printed, not asserted: the machine is shared)
def test_overhead_on_a_lenet_b64_training_step(capsys):
    et.manual_seed(0)
    model = et.models.lenet()
    opt = et.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = et.nn.CrossEntropyLoss()
    x, y = et.randn(64, 1, 28, 28), et.randint(0, 10, (64,))
    times = {False: [], True: []}
    for i in range(24):                                   # alternate: drift hits both alike
        on = bool(i % 2)
        et.set_anomaly_detection(on)
        t = time.perf_counter()
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        times[on].append(time.perf_counter() - t)
        assert np.isfinite(loss.item())
    et.set_anomaly_detection(False)
    off, on = (np.median(times[k][2:]) * 1e3 for k in (False, True))
    with capsys.disabled():
        print(f"\n[anomaly overhead] LeNet b64 train step (fp32, {et.get_backend()}): "
              f"off {off:.2f} ms, on {on:.2f} ms (x{on / off:.2f}), medians of 10")
