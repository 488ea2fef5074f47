"""Reverse-mode autograd, PyTorch semantics, tinygrad-sized.

A differentiable op is a `Function` subclass with two static methods working
on NumPy arrays:

    class Mul(Function):
        @staticmethod
        def forward(ctx, a, b):          # Tensor arguments arrive as ndarrays
            ctx.save_for_backward(a, b)
            return a * b                 # one ndarray
        @staticmethod
        def backward(ctx, grad):         # grad: ndarray shaped like the output
            a, b = ctx.saved_tensors
            return grad * b, grad * a    # one entry per forward argument
                                         # (None: no gradient for it)

`Mul.apply(x, y)` runs forward and, when grad mode is on and an input needs
a gradient, records the call (the ctx object is the output's `grad_fn`).
`Tensor.backward()` walks the recorded graph in reverse topological order
(iteratively: deep ResNets do not hit the recursion limit), accumulates into
the leaves' `.grad` and frees the saved arrays unless `retain_graph=True`.
"""
import contextlib
import functools
import sys
import threading
import time

import numpy as np



class _GradMode_TLS(threading.local):
    """Grad mode is per thread, as PyTorch's: a `no_grad()` in one thread (an
    evaluation loop, a data worker) leaves recording on in the others, and
    every new thread starts with recording on."""
    enabled = True


_grad_state = _GradMode_TLS()

# The running profile's event list (edgetrain.profiler), None when off. Off,
# the instrumentation below is this one `is None` check per forward / backward;
# on, each op appends one tuple (kind, what, pass, t0_ns, t1_ns, thread id).
# Timestamps: time.monotonic_ns (CLOCK_MONOTONIC, the clock of the C records);
# thread id: threading.get_ident (pthread_self, as the C records; no syscall).
_profiler = None
_now = time.monotonic_ns
_thread_id = threading.get_ident


def is_grad_enabled():
    """Whether ops record a graph now, in this thread."""
    return _grad_state.enabled


def set_grad_enabled_(mode):
    _grad_state.enabled = bool(mode)


class _GradMode(contextlib.ContextDecorator):
    _mode = True

    def __init__(self):
        self._prev = []

    def _recreate_cm(self):
        # as a decorator, each call gets its own instance (PyTorch's clone()):
        # calls from several threads do not share the saved-mode stack
        return type(self)()

    def __enter__(self):
        self._prev.append(is_grad_enabled())
        set_grad_enabled_(self._mode)
        return self

    def __exit__(self, *exc):
        set_grad_enabled_(self._prev.pop())
        return False


class no_grad(_GradMode):
    """Context manager / decorator: no graph is recorded inside."""
    _mode = False


class enable_grad(_GradMode):
    """Context manager / decorator: re-enables recording inside no_grad."""
    _mode = True


class set_grad_enabled(contextlib.ContextDecorator):
    """`set_grad_enabled(False)` as a call sets the mode; as a context
    manager it restores the previous mode on exit (as PyTorch's)."""

    def __init__(self, mode):
        self.mode = bool(mode)
        self._prev = is_grad_enabled()
        set_grad_enabled_(mode)

    def __call__(self, fn):
        # used as a decorator: the mode applies inside fn's calls only, so
        # undo what __init__ set at decoration time (as PyTorch's)
        set_grad_enabled_(self._prev)
        return super().__call__(fn)

    def _recreate_cm(self):
        return set_grad_enabled(self.mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        set_grad_enabled_(self._prev)
        return False


class Function:
    """Base class of differentiable ops; an instance is a graph node."""

    def __init__(self):
        self.needs_input_grad = ()
        # per forward argument: the leaf Tensor that requires grad, an _Edge to
        # the node of a non-leaf one, or None (no gradient flows there)
        self.inputs = ()
        self.saved_tensors = ()
        self._freed = False
        self._retained = None            # output tensor asking retain_grad()
        self._grad_owned = False         # set by the engine before backward: see _owned

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays

    # -- graph introspection (PyTorch-like) --
    def name(self):
        return type(self).__name__ + "Backward0"

    def __repr__(self):
        return f"<{self.name()} object at {hex(id(self))}>"

    @property
    def next_functions(self):
        out = []
        for t in self.inputs:
            if t is None or not t.requires_grad:
                out.append((None, 0))
            elif t.grad_fn is not None:
                out.append((t.grad_fn, 0))
            else:
                out.append((AccumulateGrad(t), 0))
        return tuple(out)

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        from .tensor import Tensor
        ctx = cls()
        raw = [a._data if isinstance(a, Tensor) else a for a in args]
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        record = _grad_state.enabled and any(needs)
        ctx.needs_input_grad = needs
        if _profiler is None:
            out = cls.forward(ctx, *raw, **kwargs)
        else:
            ev, t0 = _profiler, _now()
            try:
                out = cls.forward(ctx, *raw, **kwargs)
            finally:
                ev.append(("op", cls, "fwd", t0, _now(), _thread_id()))
        if not isinstance(out, np.ndarray):
            out = np.asarray(out)
        if _anomaly_enabled:             # et.set_anomaly_detection (anomaly.py)
            _anomaly_forward(ctx, args, out)
        if record:
            ctx.inputs = tuple(_edge(a, Tensor) for a in args)
            t = Tensor._wrap(out, requires_grad=True)
            t.grad_fn = ctx
            return t
        ctx.saved_tensors = ()
        return Tensor._wrap(out)


class _Edge:
    """What a node keeps of an input made by another op: that op's node and the
    input's shape, not the Tensor. Keeping the Tensor kept its array alive until
    the whole graph died, so every intermediate activation (each conv / batch-norm
    / relu / add output, float32) stayed in memory through forward and backward
    even where the consumer saved nothing or a compact copy of it (an int8 x_q,
    a relu bit mask): for ResNet-18 224x224 b32 in int8, 420 MiB held that no
    backward reads. As PyTorch's edges, it is a snapshot: the producer node it
    names is the one of record time."""
    __slots__ = ("grad_fn", "shape", "dtype")
    requires_grad = True
    is_leaf = False

    def __init__(self, t):
        self.grad_fn = t.grad_fn
        self.shape = t.shape
        self.dtype = t.dtype

    def __repr__(self):
        return f"<edge to {self.grad_fn.name()}, shape {self.shape}>"


def _edge(a, Tensor):
    """ctx.inputs' entry for forward argument `a`: None when no gradient flows to
    it (not a Tensor, or no requires_grad), the Tensor itself for a leaf (its
    .grad is accumulated into), else an _Edge (no reference to its data).
    Tensor: the class (passed in: tensor.py imports this module)."""
    if not isinstance(a, Tensor) or not a.requires_grad:
        return None
    return a if a.grad_fn is None else _Edge(a)


class AccumulateGrad:
    """Stand-in node for a leaf in next_functions (introspection only)."""

    def __init__(self, variable):
        self.variable = variable
        self.next_functions = ()

    def name(self):
        return "AccumulateGrad"

    def __repr__(self):
        return f"<AccumulateGrad object at {hex(id(self))}>"


def _accumulate_leaf(t, g):
    from .tensor import Tensor
    if g.shape != t.shape:
        g = np.broadcast_to(g, t.shape)
    if g.dtype != t._data.dtype:
        g = g.astype(t._data.dtype)
    if t.grad is None:
        # a new tensor (never aliasing the upstream array), like PyTorch
        t.grad = Tensor._wrap(np.array(g, copy=True))
    else:
        t.grad._data += g


_FREED_MSG = ("Trying to backward through the graph a second time (or directly "
              "access saved tensors after they have already been freed). Saved "
              "intermediate values of the graph are freed when you call "
              ".backward(). Specify retain_graph=True if you need to backward "
              "through the graph a second time.")


def run_backward(root, grad, retain_graph=False):
    """Backpropagates `grad` (ndarray shaped like root) from tensor `root`."""
    if _profiler is None:
        return _run_backward(root, grad, retain_graph)
    # the whole walk as one range: its self time is the engine's own work
    # (graph sort, gradient sums, leaf accumulation)
    ev, t0 = _profiler, _now()
    try:
        return _run_backward(root, grad, retain_graph)
    finally:
        ev.append(("engine", "autograd.backward", "", t0, _now(), _thread_id()))


def _owned(g):
    """True when array g is referenced only by the caller's one local variable
    (sys.getrefcount counts that, this parameter and its own argument: 3), owns
    its memory or wraps a non-array buffer owner (edgetrain's aligned storage),
    and is a writable C-contiguous float32 array."""
    return (type(g) is np.ndarray and sys.getrefcount(g) <= 3
            and not isinstance(g.base, np.ndarray) and g.dtype == np.float32
            and g.flags.c_contiguous and g.flags.writeable)


def _run_backward(root, grad, retain_graph):
    if root.grad_fn is None:
        if root.requires_grad:           # a leaf: d root / d root
            _accumulate_leaf(root, grad)
        return
    # Topological order of the nodes reachable from root: iterative DFS post-order.
    # A node is marked when it is expanded, not when it is pushed: a node pushed
    # by one consumer but first reached through a longer path (y + f(y), where y
    # is the Add's first input: MobileNetV2's x + conv(x)) must be expanded, and so
    # finished, inside that path, or it would be processed before f's gradient
    # reaches it and lose it. A stale second entry is skipped when popped.
    order, expanded = [], set()
    stack = [(root.grad_fn, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in expanded:
            continue
        expanded.add(id(node))
        stack.append((node, True))
        for t in node.inputs:
            if t is not None and t.grad_fn is not None and id(t.grad_fn) not in expanded:
                stack.append((t.grad_fn, False))
    grads = {id(root.grad_fn): grad}
    for node in reversed(order):         # consumers before producers
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if node._freed:
            raise RuntimeError(_FREED_MSG)
        if node._retained is not None:
            _accumulate_leaf(node._retained, g)
        # g is this node's alone when nothing else references the array (no other
        # pending entry, no view of it, not the caller's gradient) and it is no view
        # itself: a backward may then write its input gradient over it (relu, batch
        # norm: one activation-sized buffer less at a time; ResNet-18 224's stem:
        # 98 MiB at b32). Not with anomaly detection, which reads g afterwards.
        node._grad_owned = not _anomaly_enabled and _owned(g)
        if _profiler is None:
            in_grads = node.backward(node, g)
        else:
            ev, t0 = _profiler, _now()
            try:
                in_grads = node.backward(node, g)
            finally:
                ev.append(("op", type(node), "bwd", t0, _now(), _thread_id()))
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        if len(in_grads) < len(node.inputs):
            in_grads = in_grads + (None,) * (len(node.inputs) - len(in_grads))
        if _anomaly_enabled:             # et.set_anomaly_detection (anomaly.py)
            _anomaly_backward(node, g, in_grads, node is root.grad_fn)
        for t, ig in zip(node.inputs, in_grads):
            if t is None or ig is None or not t.requires_grad:
                continue
            ig = np.asarray(ig)
            if ig.shape != t.shape:
                raise RuntimeError(f"Function {node.name()} returned an invalid "
                                   f"gradient: got shape {ig.shape}, expected {t.shape}")
            if t.grad_fn is None:
                _accumulate_leaf(t, ig)
            else:
                key = id(t.grad_fn)
                prev = grads.get(key)
                grads[key] = ig if prev is None else prev + ig
        # drop this iteration's references: the next node's g must be countable
        # as its alone (_owned)
        in_grads = ig = prev = None
        if not retain_graph:
            node.saved_tensors = ()
            node._freed = True


# Anomaly detection (edgetrain/anomaly.py) and gradcheck (edgetrain/gradcheck.py)
# live in their own files; they are re-exported here because PyTorch users look
# for them under torch.autograd. When anomaly detection is off, the only cost
# is the two `if _anomaly_enabled:` tests above (a module global).
_anomaly_enabled = False
from .anomaly import (check_forward as _anomaly_forward,  # noqa: E402
                      check_backward as _anomaly_backward,
                      detect_anomaly, set_detect_anomaly, is_anomaly_enabled)
from .gradcheck import gradcheck  # noqa: E402

__all__ = ["Function", "no_grad", "enable_grad", "set_grad_enabled",
           "is_grad_enabled", "detect_anomaly", "set_detect_anomaly",
           "is_anomaly_enabled", "gradcheck"]
