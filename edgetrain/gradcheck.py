"""et.autograd.gradcheck: backward() against central finite differences.

    et.autograd.gradcheck(fn, inputs, eps=None, atol=None, rtol=None,
                          raise_exception=True, nondet_tol=0.0, fast_mode=False)

As torch.autograd.gradcheck: `fn(*inputs)` returns a Tensor or a tuple of
Tensors; the inputs that require grad (leaf tensors) are checked. Two
Jacobians are built per (differentiable output, checked input) pair, shaped
(output.numel(), input.numel()):

* analytical: one backward() per output element with a one-hot grad_output
  (retain_graph=True); row j is every input's .grad -- the vector-Jacobian
  products the framework computes;
* numerical: for each input element x_k, the central difference
  (f(x_k + h) - f(x_k - h)) / (2h) of every output element, evaluated under
  no_grad; column k.

An element fails when |analytical - numerical| > atol + rtol * |numerical|
(NaN in either fails). The GradcheckError (raise_exception=True; else False
is returned) names the worst element -- output, input and both indices --
with both values, the difference, the tolerance, and how many elements fail.
`nondet_tol`: the backward of output element 0 is run twice and must agree
within it (torch's reentrancy check; 0.0: bit-identical).
`fast_mode=True`: one random direction u per input and one random v per
output instead of the full Jacobians: v . J u from one backward and two
evaluations (torch's fast mode; coarser, for shapes too big for full mode).

Precision, and why the defaults depend on the dtypes:

* float64 everywhere (the NumPy elementwise / reduction / shape ops of
  edgetrain.tensor accept float64): torch's defaults, eps = 1e-6,
  atol = 1e-5, rtol = 1e-3.
* float32 (conv2d, linear, relu, pooling, batch_norm, log_softmax, nll_loss
  run C kernels that are float32-only, and 2-D float32 matmuls go to the
  backend): eps = 1e-2, atol = 1e-3, rtol = 1e-3 (FP32_DEFAULTS). A central
  difference has a truncation error ~ h^2/6 |f'''| and a rounding error ~
  u |f| / h (u = 6e-8, the float32 unit roundoff; more where an output is a
  sum of K terms, ~ sqrt(K) u sum|terms| / h). With h = 1e-3 the rounding
  term reaches 1e-3 for outputs of magnitude ~10 (conv/linear sums of 50
  terms); with h = 1e-2 it is ~1e-4 while the truncation term stays ~2e-5
  |f'''| (conv2d / linear / pooling / pad / reshape are piecewise linear:
  no truncation error at all). Measured on tests/test_gradcheck.py's float32
  cases (a correct backward): the worst |analytical - numerical| is 7.7e-5
  (batch_norm in training mode, Jacobian entries up to 2.5), at most 4e-5 for
  conv2d / linear / matmul on ref, blas and onednn, 1e-5 for log_softmax --
  at most 6% of the tolerance; a backward off by 1% (conv2d's weight
  gradient, avg_pool2d, batch_norm, log_softmax) exceeds it 3x to 7x.
* The step is relative: h_k = eps * max(1, |x_k|) (the float32 spacing grows
  with |x_k|), and the denominator is the step actually taken,
  float64(x_k + h) - float64(x_k - h) after rounding to the input's dtype,
  so no error comes from h itself. Outputs are differenced in float64.
* Kinks (relu at 0, max-pool ties, clamp / hardtanh bounds, abs at 0): the
  finite difference straddles them when an input lies within h of one, so
  test inputs are chosen at least a few h away (tests/test_gradcheck.py).
"""
import numbers

import numpy as np

from .errors import GradcheckError

__all__ = ["gradcheck", "FP32_DEFAULTS", "FP64_DEFAULTS"]

FP64_DEFAULTS = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}   # torch.autograd.gradcheck's
FP32_DEFAULTS = {"eps": 1e-2, "atol": 1e-3, "rtol": 1e-3}   # see the module docstring


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _outputs(func, inputs, where):
    """fn's differentiable (floating) output tensors, as a tuple."""
    from .tensor import Tensor
    out = _as_tuple(func(*inputs))
    for i, o in enumerate(out):
        if not isinstance(o, Tensor):
            raise TypeError(f"gradcheck: {where}: output {i} of fn is a "
                            f"{type(o).__name__}, expected Tensors")
    return tuple(o for o in out if o._data.dtype.kind == "f")


def _flat_values(outs):
    """All outputs' values as one float64 vector (a copy: an output may be a view
    of an input, which the numerical loop perturbs)."""
    if not outs:
        return np.zeros(0)
    return np.concatenate([np.asarray(o._data, dtype=np.float64).ravel() for o in outs])


def _defaults(dtypes, eps, atol, rtol):
    base = FP64_DEFAULTS if all(d == np.float64 for d in dtypes) else FP32_DEFAULTS
    return (base["eps"] if eps is None else float(eps),
            base["atol"] if atol is None else float(atol),
            base["rtol"] if rtol is None else float(rtol))


def _analytical(inputs, checked, outs, n_out, rows=None):
    """J_i (n_out, numel_i) float64 for each checked input i: one backward per
    output element with a one-hot gradient (only the first `rows` when given)."""
    from .tensor import Tensor
    jac = [np.zeros((n_out, inputs[i].numel())) for i in checked]
    row = 0
    for o in outs:
        for j in range(o.numel()):
            if rows is not None and row >= rows:
                return jac
            if o.requires_grad:
                for i in checked:
                    inputs[i].grad = None
                onehot = np.zeros(o.shape, dtype=o._data.dtype)
                onehot.reshape(-1)[j] = 1
                o.backward(Tensor._wrap(onehot), retain_graph=True)
                for c, i in enumerate(checked):
                    g = inputs[i].grad
                    if g is not None:
                        jac[c][row] = np.asarray(g._data, dtype=np.float64).ravel()
            row += 1
    return jac


def _numerical(func, inputs, checked, n_out, eps):
    from .autograd import no_grad
    jac = []
    with no_grad():
        for i in checked:
            a = inputs[i]._data
            if not a.flags.writeable:
                raise ValueError(f"gradcheck: input {i} is a read-only array")
            J = np.zeros((n_out, a.size))
            for k in range(a.size):
                idx = np.unravel_index(k, a.shape)
                x0 = a[idx].copy()
                h = eps * max(1.0, abs(float(x0)))
                xp, xm = a.dtype.type(float(x0) + h), a.dtype.type(float(x0) - h)
                d = float(xp) - float(xm)            # the step actually taken (2h)
                a[idx] = xp
                fp = _flat_values(_outputs(func, inputs, "numerical"))
                a[idx] = xm
                fm = _flat_values(_outputs(func, inputs, "numerical"))
                a[idx] = x0
                J[:, k] = (fp - fm) / d
            jac.append(J)
    return jac


def _out_index(outs, row):
    for n, o in enumerate(outs):
        if row < o.numel():
            return n, tuple(int(v) for v in np.unravel_index(row, o.shape)) if o.ndim else ()
        row -= o.numel()
    raise AssertionError("row out of range")


def _fail(msg, raise_exception):
    if raise_exception:
        raise GradcheckError(msg)
    return False


def gradcheck(func, inputs, *, eps=None, atol=None, rtol=None, raise_exception=True,
              nondet_tol=0.0, fast_mode=False, seed=0):
    """True when fn's backward matches central finite differences for every
    input that requires grad (see the module docstring); else raises
    GradcheckError naming the worst element, or returns False when
    raise_exception=False. eps / atol / rtol default by dtype: torch's
    (1e-6 / 1e-5 / 1e-3) when every checked input is float64, FP32_DEFAULTS
    (1e-2 / 1e-3 / 1e-3) otherwise; the step is eps * max(1, |x|)."""
    from .tensor import Tensor
    inputs = _as_tuple(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck expects at least one input tensor to require gradient")
    for i in checked:
        t = inputs[i]
        if t.grad_fn is not None:
            raise ValueError(f"gradcheck: input {i} (shape {t.shape}) is not a leaf tensor: "
                             "pass leaves (tensors made with requires_grad=True)")
        if t._data.dtype not in (np.float32, np.float64):
            raise ValueError(f"gradcheck: input {i} has dtype {t.dtype}; float32 or float64 "
                             "inputs are needed for finite differences")
    for name, v in (("eps", eps), ("atol", atol), ("rtol", rtol)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or
                              not v >= 0 or (name == "eps" and not v > 0)):
            kind = "positive" if name == "eps" else "non-negative"
            raise ValueError(f"gradcheck: {name} must be a {kind} number, got {v!r}")
    saved_grads = [inputs[i].grad for i in checked]
    try:
        outs = _outputs(func, inputs, "analytical")
        dtypes = [inputs[i]._data.dtype for i in checked] + [o._data.dtype for o in outs]
        eps, atol, rtol = _defaults(dtypes, eps, atol, rtol)
        if fast_mode:
            return _fast(func, inputs, checked, outs, eps, atol, rtol, raise_exception, seed)
        n_out = int(sum(o.numel() for o in outs))
        ana = _analytical(inputs, checked, outs, n_out)
        if n_out and outs[0].requires_grad and outs[0].numel():
            again = _analytical(inputs, checked, outs, n_out, rows=1)
            for c, i in enumerate(checked):
                dev = np.max(np.abs(again[c][0] - ana[c][0]), initial=0.0)
                if not dev <= nondet_tol:
                    return _fail(f"Backward is not reentrant, i.e., running backward with the "
                                 f"same input and grad_output multiple times gives different "
                                 f"values (input {i}: max deviation {dev:.6g} > nondet_tol "
                                 f"{nondet_tol})", raise_exception)
        num = _numerical(func, inputs, checked, n_out, eps)
    finally:
        for i, g in zip(checked, saved_grads):
            inputs[i].grad = g
    for c, i in enumerate(checked):
        a, n = ana[c], num[c]
        if a.size == 0:
            continue
        tol = atol + rtol * np.abs(n)
        err = np.abs(a - n)
        bad = ~(err <= tol)                       # NaN fails
        if not bad.any():
            continue
        excess = np.where(np.isnan(err), np.inf, err - tol)
        row, col = np.unravel_index(int(np.argmax(excess)), a.shape)
        on, oidx = _out_index(outs, row)
        iidx = tuple(int(v) for v in np.unravel_index(col, inputs[i].shape))
        return _fail(
            f"Jacobian mismatch for output {on} with respect to input {i}: worst element "
            f"d output{on}{list(oidx)} / d input{i}{list(iidx)}: numerical {n[row, col]:.8g}, "
            f"analytical {a[row, col]:.8g}, |difference| {err[row, col]:.3g} > atol {atol:g} "
            f"+ rtol {rtol:g} * |numerical| = {tol[row, col]:.3g}; {int(bad.sum())} of "
            f"{a.size} Jacobian elements out of tolerance (output {on} shape "
            f"{outs[on].shape}, input {i} shape {inputs[i].shape}, {inputs[i].dtype}, "
            f"eps {eps:g})", raise_exception)
    return True


def _fast(func, inputs, checked, outs, eps, atol, rtol, raise_exception, seed):
    """v . J u: analytical from one backward with grad_output v, numerical from
    f(x + h u) and f(x - h u) with the step actually taken (after rounding to
    the input dtype) as the direction."""
    from .autograd import no_grad
    from .tensor import Tensor
    rng = np.random.default_rng(seed)
    vs = [rng.standard_normal(o.shape) for o in outs]
    ana = 0.0
    for i in checked:
        inputs[i].grad = None
    for o, v in zip(outs, vs):
        if o.requires_grad:
            o.backward(Tensor._wrap(v.astype(o._data.dtype)), retain_graph=True)
    grads = [inputs[i].grad for i in checked]
    orig, plus, minus, dirs = [], [], [], []
    for i in checked:
        a = inputs[i]._data
        u = rng.standard_normal(a.shape)
        h = eps * np.maximum(1.0, np.abs(a.astype(np.float64))) * u
        xp = (a + h).astype(a.dtype)
        xm = (a - h).astype(a.dtype)
        orig.append(a.copy())
        plus.append(xp)
        minus.append(xm)
        dirs.append(xp.astype(np.float64) - xm.astype(np.float64))        # 2h u, as taken
    for g, d in zip(grads, dirs):
        if g is not None:
            ana += float(np.sum(np.asarray(g._data, dtype=np.float64) * d))
    vflat = np.concatenate([v.ravel() for v in vs]) if vs else np.zeros(0)
    try:
        with no_grad():
            for c, i in enumerate(checked):
                inputs[i]._data[...] = plus[c]
            fp = _flat_values(_outputs(func, inputs, "numerical"))
            for c, i in enumerate(checked):
                inputs[i]._data[...] = minus[c]
            fm = _flat_values(_outputs(func, inputs, "numerical"))
    finally:
        for c, i in enumerate(checked):
            inputs[i]._data[...] = orig[c]
    num = float(np.dot(vflat, fp - fm))
    # both sides are v . J (2h u); tolerances scale with the size of the terms
    scale = float(np.sqrt(np.sum(vflat ** 2)) * np.sqrt(sum(np.sum(d ** 2) for d in dirs)))
    scale = max(scale, 1e-300)
    tol = atol * scale + rtol * abs(num)
    if not abs(ana - num) <= tol:
        return _fail(f"Jacobian mismatch (fast mode): v . J u numerical {num:.8g}, analytical "
                     f"{ana:.8g}, |difference| {abs(ana - num):.3g} > {tol:.3g} (atol {atol:g} "
                     f"* |v| |2h u| + rtol {rtol:g} * |numerical|; eps {eps:g})", raise_exception)
    return True
