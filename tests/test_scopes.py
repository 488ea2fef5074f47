"""Scoped modes are per thread, as PyTorch's no_grad / autocast: grad mode
(`no_grad`, `enable_grad`, `set_grad_enabled`), `et.precision(...)` and
`et.backend(...)`. A scope entered in one thread must not change what another
thread records or computes, a new thread starts from the defaults, and a
decorated function called from several threads at once restores each
thread's own mode.

The threads below meet at barriers while both are inside their scopes, so the
overlap the tests are about happens on every run, not by chance.
"""
import threading

import numpy as np
import pytest

import edgetrain as et

TIMEOUT = 30


def run_threads(*fns):
    """Runs each fn in its own thread; re-raises the first failure."""
    errors = []

    def wrap(fn):
        def body():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(e)
        return body

    ts = [threading.Thread(target=wrap(fn)) for fn in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a thread of the test hung"
    if errors:
        raise errors[0]


# ------------------------------------------------------------------ grad mode
def test_no_grad_in_one_thread_does_not_stop_recording_in_another():
    both_inside = threading.Barrier(2, timeout=TIMEOUT)
    seen = {}
    w = et.tensor(np.ones(3, np.float32), requires_grad=True)

    def evaluator():
        with et.no_grad():
            both_inside.wait()       # the trainer computes while we are inside
            seen["eval"] = (w * 2).requires_grad
            both_inside.wait()

    def trainer():
        both_inside.wait()
        y = (w * 2).sum()
        seen["train"] = (y.requires_grad, et.is_grad_enabled())
        both_inside.wait()

    run_threads(evaluator, trainer)
    assert seen["eval"] is False
    assert seen["train"] == (True, True)
    assert et.is_grad_enabled()


def test_new_thread_starts_with_grad_enabled():
    seen = []
    with et.no_grad():
        run_threads(lambda: seen.append(et.is_grad_enabled()))
        assert not et.is_grad_enabled()
    assert seen == [True]
    assert et.is_grad_enabled()


def test_no_grad_decorator_called_from_two_threads_at_once():
    both_inside = threading.Barrier(2, timeout=TIMEOUT)

    @et.no_grad()
    def f():
        both_inside.wait()
        inside = et.is_grad_enabled()
        both_inside.wait()
        return inside

    seen = []

    def call_then_check():
        seen.append((f(), et.is_grad_enabled()))

    run_threads(call_then_check, call_then_check)
    assert seen == [(False, True), (False, True)]


def test_set_grad_enabled_as_decorator_applies_only_inside():
    @et.set_grad_enabled(False)
    def f():
        return et.is_grad_enabled()

    assert et.is_grad_enabled(), "decorating must not switch recording off"
    assert f() is False
    assert et.is_grad_enabled()
    # as a call it still sets the mode, and as a context manager restores it
    et.set_grad_enabled(False)
    try:
        assert not et.is_grad_enabled()
        with et.set_grad_enabled(True):
            assert et.is_grad_enabled()
        assert not et.is_grad_enabled()
    finally:
        et.set_grad_enabled(True)


# ------------------------------------------------------------------ precision
def _linear_out(x, w):
    return et.nn.functional.linear(et.tensor(x), et.tensor(w)).numpy()


def test_precision_scope_is_per_thread():
    """Thread A computes a linear in int8 while thread B, at the same time,
    computes it at the default fp32: B's result is the fp32 one exactly, A's
    the int8 one exactly (each checked against the same call alone)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    want_fp32 = _linear_out(x, w)
    with et.precision("int8"):
        want_int8 = _linear_out(x, w)
    assert not np.array_equal(want_fp32, want_int8), "int8 must differ from fp32 here"

    both_inside = threading.Barrier(2, timeout=TIMEOUT)
    seen = {}

    def int8_thread():
        with et.precision("int8"):
            both_inside.wait()
            seen["a"] = (_linear_out(x, w), et.get_precision()["forward"])
            both_inside.wait()

    def default_thread():
        both_inside.wait()
        seen["b"] = (_linear_out(x, w), et.get_precision()["forward"])
        both_inside.wait()

    run_threads(int8_thread, default_thread)
    np.testing.assert_array_equal(seen["a"][0], want_int8)
    np.testing.assert_array_equal(seen["b"][0], want_fp32)
    assert (seen["a"][1], seen["b"][1]) == ("int8", "fp32")
    assert et.get_precision()["forward"] == "fp32"


def test_set_precision_default_is_process_wide():
    seen = []
    et.set_precision("bf16")
    try:
        run_threads(lambda: seen.append(et.get_precision()["forward"]))
    finally:
        et.set_precision("fp32")
    assert seen == ["bf16"]


def test_precision_decorator_called_from_two_threads_at_once():
    both_inside = threading.Barrier(2, timeout=TIMEOUT)

    @et.precision("fp16")
    def f():
        both_inside.wait()
        inside = et.get_precision()["backward_weight"]
        both_inside.wait()
        return inside

    seen = []
    run_threads(*[lambda: seen.append((f(), et.get_precision()["forward"]))] * 2)
    assert seen == [("fp16", "fp32"), ("fp16", "fp32")]


# -------------------------------------------------------------------- backend
@pytest.mark.skipif(len(et.backends()) < 2,
                    reason="needs two backends built (ref and one more) to tell scopes apart")
def test_backend_scope_is_per_thread():
    default = et.get_backend()
    other = next(b for b in et.backends() if b != default)
    both_inside = threading.Barrier(2, timeout=TIMEOUT)
    seen = {}

    def scoped():
        with et.backend(other):
            both_inside.wait()
            seen["a"] = et.get_backend()
            both_inside.wait()
        seen["a_after"] = et.get_backend()

    def unscoped():
        both_inside.wait()
        seen["b"] = et.get_backend()
        both_inside.wait()

    run_threads(scoped, unscoped)
    assert seen == {"a": other, "a_after": default, "b": default}
    assert et.get_backend() == default


@pytest.mark.skipif(len(et.backends()) < 2,
                    reason="needs two backends built (ref and one more) to tell scopes apart")
def test_set_backend_inside_a_scope_sets_the_process_wide_one():
    default = et.get_backend()
    other = next(b for b in et.backends() if b != default)
    try:
        with et.backend(other):
            et.set_backend(default)
            assert et.get_backend() == other, "the scope wins while it is open"
            et.set_backend(other)
        assert et.get_backend() == other, "set_backend inside the scope outlives it"
    finally:
        et.set_backend(default)
    assert et.get_backend() == default
