"""Anomaly detection: a NaN or Inf is reported by the operation that made it.

    et.set_anomaly_detection(True)        # process-wide; et.is_anomaly_enabled()
    with et.autograd.detect_anomaly(): ...            # scoped (torch's name)
    with et.autograd.set_detect_anomaly(False): ...   # scoped off, or a call

Why: a NaN in a loss says nothing about where it came from; by the time it is
seen every downstream activation and gradient is NaN too. With detection on,
every differentiable op (every `Function.apply`, edgetrain/autograd.py) checks
its output array right after its forward, and `backward()` checks every
gradient each node's backward returns, so the first producer is named:

    AnomalyError: Log (forward) produced 2 NaN, 0 Inf in its output of shape
    (4, 3) (first at index (0, 1), value nan); its inputs are finite;
    called at model.py:17 in forward

    AnomalyError: Div.backward produced 0 NaN, 1 Inf in the gradient of its
    input 1 (shape (3,), first at index (2,), value -inf) from a finite
    incoming gradient; the forward Div was called at model.py:21 in forward

What is checked, and the wording that tells the cases apart:

* forward, each op: its leaf inputs (data, parameters: tensors no op made,
  so no earlier check saw them) -> "input of <Op> already non-finite: its
  input i (a Parameter / a leaf tensor ...) holds ..."; then its output ->
  "<Op> (forward) produced ..." when its inputs are finite, else "input of
  <Op> already non-finite" (an input made outside the checked ops, e.g. by an
  in-place update) -- the first operation that meets the bad values is
  named, never a later one.
* backward, each node: the gradient reaching it (finite unless a sum of
  several consumers' finite gradients overflowed, or the gradient passed to
  backward() was bad) and each gradient it returns -> "<Op>.backward ...".
* `AnomalyError` is an `EdgetrainError` and a `RuntimeError` (torch raises
  RuntimeError from detect_anomaly).

Cost. Off (the default): the two `if _anomaly_enabled:` tests in
autograd.py, nothing else. On: one pass over each output / gradient (a dot
product a . a -- finite only if every element is; see _finite), one over each
leaf input, and a walk up the Python stack to record the calling line;
tests/test_anomaly.py measures it on a LeNet batch-64 training step.

Low precision (edgetrain/precision.py):

* int8: the quantizers refuse NaN/Inf ("quantize_per_tensor: input contains
  NaN/Inf at index i"), which names the quantizer, not the cause; with
  detection on, the op that made the NaN is named first (its forward check
  runs before the next conv2d / linear quantizes it).
  Saturation: int8 scales are dynamic, per tensor (activations, gradients) or
  per output channel (weights), scale = max|x| / qmax, so |x / scale| <= qmax
  up to one float32 rounding: the clamp to [-qmax, qmax] never moves a value
  by more than that rounding (the rounded integer is unchanged), i.e. the
  quantizers cannot saturate by construction; there is nothing to count
  (tests/test_anomaly.py checks |dequantized - x| <= scale / 2 everywhere,
  extremes included, and a stochastic error below one step). u8 is used only
  for tensors that are >= 0 (checked), so its clamp at 0 loses nothing.
  (Static scales, which can saturate, exist only in the _C.quantize_per_tensor
  binding; no training path uses them.)
  The int32 accumulators of the int8 products: backward-weight sums are split
  in chunks so they stay below 2^31 (csrc/ops/conv2d_lowp.c, linear_lowp.c;
  a conv whose single output plane exceeds 66,311 pixels is not split
  further). Forward and backward-data reductions of length K are exact while
  K * qmax_x * 127 < 2^31: K <= 133,144 with the default 7-bit u8
  activations, 66,311 with full 8-bit ones; beyond, the ref backend
  saturates the sum. No model in edgetrain comes near (its largest K is
  4,608 = 512 * 3 * 3, ResNet's 3x3 convs); this is not counted per step.
* fp16 / bf16: an operand that overflows half (|x| >= 65520) becomes Inf and
  the product Inf / NaN; with detection on, the conv2d / linear (or Cast) that
  produced it is named. Without detection, fp16 training uses
  et.amp.GradScaler (edgetrain/amp.py; tests/test_amp.py
  test_fp16_overflow_skips_then_recovers): unscale_ checks every gradient, a
  step whose gradients hold Inf / NaN is skipped -- scaler.step() returns None
  and leaves parameters and optimizer state untouched -- and update()
  multiplies the scale by backoff_factor (a drop in scaler.get_scale() is the
  report). Do not probe GradScaler's overflow under anomaly detection: an
  overflowed scaled backward is expected there and detection turns it into
  an AnomalyError (as torch's detect_anomaly does).
* Leaf gradients that overflow while being accumulated across backward()
  calls (`.grad += g`) are not checked here; the optimizer's next step would
  write them into a parameter, which the next forward then reports as
  "input of <Op> already non-finite: its input i (a Parameter ...)".
"""
import contextlib
import os
import sys

import numpy as np

from . import autograd as _autograd
from .errors import AnomalyError

__all__ = ["set_anomaly_detection", "is_anomaly_enabled", "detect_anomaly",
           "set_detect_anomaly", "AnomalyError"]

_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def set_anomaly_detection(mode):
    """Turns anomaly detection on (True) or off (False) process-wide."""
    if not isinstance(mode, (bool, np.bool_)):
        raise TypeError(f"set_anomaly_detection: mode must be a bool, got {mode!r}")
    _autograd._anomaly_enabled = bool(mode)


def is_anomaly_enabled():
    """True while anomaly detection is on (torch.is_anomaly_enabled)."""
    return _autograd._anomaly_enabled


class detect_anomaly(contextlib.ContextDecorator):
    """Context manager / decorator: anomaly detection on inside, the previous
    mode restored on exit (torch.autograd.detect_anomaly). `check_nan` is
    torch's argument: False turns detection off inside."""

    def __init__(self, check_nan=True):
        self.check_nan = bool(check_nan)
        self._prev = []

    def __enter__(self):
        self._prev.append(is_anomaly_enabled())
        set_anomaly_detection(self.check_nan)
        return self

    def __exit__(self, *exc):
        set_anomaly_detection(self._prev.pop())
        return False


class set_detect_anomaly(contextlib.ContextDecorator):
    """`set_detect_anomaly(mode)` as a call sets the mode; as a context manager
    it restores the previous mode on exit (torch.autograd.set_detect_anomaly)."""

    def __init__(self, mode, check_nan=True):
        self._prev = is_anomaly_enabled()
        set_anomaly_detection(bool(mode) and bool(check_nan))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        set_anomaly_detection(self._prev)
        return False


# ---------------------------------------------------------------------------
# the checks (called from autograd.py only while detection is on)
def _finite(a):
    """True when float array `a` holds no NaN/Inf. A finite dot product a . a
    proves it (NaN/Inf anywhere makes it NaN/Inf), at BLAS speed (3-4x faster
    than a sum or np.isfinite(a).all() here); a non-finite one is either a bad
    value or an overflow of the squares (|a| > 1.8e19 in float32), which the
    exact check tells apart. Strided / broadcast views and float16 (no BLAS,
    and its squares overflow from 256) take the exact check directly."""
    if a.dtype in _BLAS_DTYPES and a.flags.c_contiguous and a.size:
        v = a.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(v, v)):
                return True
    return bool(np.isfinite(a).all())


_BLAS_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_float(a):
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def _describe(a):
    """'2 NaN, 1 Inf ... (shape S, first at index I, value v)' for float array a."""
    bad = ~np.isfinite(a)
    n_nan = int(np.isnan(a).sum())
    n_inf = int(bad.sum()) - n_nan
    first = np.unravel_index(int(np.argmax(bad)), a.shape) if a.ndim else ()
    return (f"{n_nan} NaN, {n_inf} Inf of {a.size} values (shape {tuple(a.shape)}, first "
            f"at index {tuple(int(i) for i in first)}, value {a[first]})")


def op_name(node):
    """'Conv2d' for the node of F.conv2d (class _Conv2d), 'Log' for Log."""
    return type(node).__name__.lstrip("_")


def _user_site():
    """'file.py:LINE in func' of the innermost frame outside the edgetrain
    package (the user's call that ran the op), or '' when none."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f = f.f_back
    if f is None:
        return ""
    return f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}"


def _leaf_kind(t):
    from .nn.parameter import Parameter
    return (f"a Parameter of shape {t.shape}" if isinstance(t, Parameter)
            else f"a leaf tensor (data or a tensor no recorded op made) of shape {t.shape}")


def check_forward(ctx, args, out):
    """After `type(ctx).forward`: args are apply()'s arguments (Tensors and
    others), out the output ndarray. Raises AnomalyError on NaN/Inf."""
    from .tensor import Tensor
    site = _user_site()
    ctx._anomaly_site = site                 # named again if its backward fails
    where = f"; called at {site}" if site else ""
    name = op_name(ctx)
    # Leaf inputs: no op made them, so no earlier check has seen them.
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and a.grad_fn is None and _is_float(a._data) \
                and not _finite(a._data):
            raise AnomalyError(f"input of {name} already non-finite: its input {i} "
                               f"({_leaf_kind(a)}) holds {_describe(a._data)} before the op"
                               f"{where}")
    if not _is_float(out) or _finite(out):
        return
    for i, a in enumerate(args):
        arr = a._data if isinstance(a, Tensor) else a
        if _is_float(arr) and not _finite(arr):
            made = (f"made by {a.grad_fn.name()} outside anomaly detection or in place"
                    if isinstance(a, Tensor) and a.grad_fn is not None
                    else "not an edgetrain op's output")
            raise AnomalyError(f"input of {name} already non-finite: its input {i} ({made}) "
                               f"holds {_describe(arr)}; {name}'s output then has "
                               f"{_describe(out)}{where}")
    raise AnomalyError(f"{name} (forward) produced {_describe(out)} in its output; its inputs "
                       f"are finite{where}")


def check_backward(node, g, in_grads, is_root):
    """After `node.backward(node, g)` returned `in_grads` (one per input)."""
    name = op_name(node)
    site = getattr(node, "_anomaly_site", "")
    where = f"; the forward {name} was called at {site}" if site else ""
    g = np.asarray(g)
    if _is_float(g) and not _finite(g):
        why = ("the gradient passed to backward()" if is_root else
               "the sum of the finite gradients of its consumers overflowed")
        raise AnomalyError(f"the gradient reaching {name}.backward is non-finite ({why}): "
                           f"{_describe(g)}{where}")
    for i, ig in enumerate(in_grads):
        if ig is None:
            continue
        ig = np.asarray(ig)
        if _is_float(ig) and not _finite(ig):
            raise AnomalyError(f"{name}.backward produced {_describe(ig)} in the gradient of "
                               f"its input {i} from a finite incoming gradient{where}")
