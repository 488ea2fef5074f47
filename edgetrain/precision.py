"""At what precision the heavy products (conv2d / linear) run.

    et.set_precision("int8")             # process-wide default policy
    with et.precision("bf16"): ...       # scoped, this thread only (restores on
                                         # exit); also a decorator
    model.set_precision("int8-mixed")    # one layer / a subtree; None clears it
    et.get_precision()                   # {"forward": ..., "backward_data": ...,
                                         #  "backward_weight": ...} in force now
    et.saved_activation_bytes()          # bytes held by live conv/linear nodes

A policy is a preset name or a dict naming every pass:

    "fp32"        fp32 / fp32 / fp32   (the default: the exact fp32 path)
    "bf16"        bf16 / bf16 / bf16
    "fp16"        fp16 / fp16 / fp16
    "int8"        int8 / int8 / int8
    "int8-mixed"  int8 forward and backward-data, bf16 backward-weight
    {"forward": p, "backward_data": p, "backward_weight": p}, p in
    "fp32" | "bf16" | "fp16" | "int8" (aliases "float32", "bfloat16", "float16")

Only conv2d / linear products change: master weights, BatchNorm and optimizer
state stay fp32 whatever the policy. A Conv2d / Linear layer uses its own
policy (module.set_precision) if it has one, else the innermost
`et.precision(...)` context of the calling thread (scopes are per thread, as
PyTorch's autocast and no_grad), else the process-wide default. Activations
(conv2d / linear inputs) are saved for backward at the forward's precision:
an int8 forward keeps them quantized (1 byte per element instead of 4), a
bf16 / fp16 forward keeps their 16-bit values (2 bytes), which are exactly
what its product consumed; a backward-weight pass at another precision widens
them to fp32 first (as PyTorch's autocast, which saves the cast inputs).

int8 ranges: weights per output channel in [-127, 127]; activations and
gradients per tensor in 7 bits by default -- u8 [0, 127] for non-negative
activations (post-ReLU), else s8 [-63, 63] -- as fbgemm's `reduce_range` on
CPUs without VNNI. Why: there the int8 kernels add pairs of u8 x s8 products
into a saturating int16, so full-range operands need two kernel runs to stay
exact; with 7 bits every forward, backward-data and backward-weight product
runs once, exactly (2 * 127 * 127 <= 32767). `et.set_int8_reduce_range(False)`
selects full 8-bit activations and gradients (still exact, slower here).
"""
import contextlib
import threading

__all__ = ["set_precision", "get_precision", "precision", "saved_activation_bytes",
           "resolve_policy", "set_int8_reduce_range", "int8_reduce_range"]

PASSES = ("forward", "backward_data", "backward_weight")
_NAMES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
          "fp16": "fp16", "float16": "fp16", "int8": "int8"}
_PRESETS = {
    "fp32": ("fp32", "fp32", "fp32"),
    "bf16": ("bf16", "bf16", "bf16"),
    "fp16": ("fp16", "fp16", "fp16"),
    "int8": ("int8", "int8", "int8"),
    "int8-mixed": ("int8", "int8", "bf16"),
}
FP32 = _PRESETS["fp32"]

_default = FP32        # process-wide (set_precision)


class _Scope(threading.local):
    """The innermost et.precision(...) / layer scope, per thread (as PyTorch's
    autocast): a scope entered in one thread does not change what another
    thread computes. None: the process-wide default is in force."""
    current = None


_scope = _Scope()


def _resolve(policy):
    """policy -> (forward, backward_data, backward_weight) precision names."""
    if isinstance(policy, tuple) and policy in _PRESETS.values():
        return policy
    if isinstance(policy, str):
        key = policy.lower()
        if key in _PRESETS:
            return _PRESETS[key]
        if key in _NAMES:                      # "float32", "bfloat16", ...
            p = _NAMES[key]
            return (p, p, p)
        raise ValueError(f"precision: unknown policy {policy!r}: expected one of "
                         f"{', '.join(repr(k) for k in _PRESETS)} or a dict with keys "
                         f"{', '.join(repr(k) for k in PASSES)}")
    if isinstance(policy, dict):
        keys = set(policy)
        missing = [k for k in PASSES if k not in keys]
        unknown = sorted(repr(k) for k in keys if k not in PASSES)
        if missing or unknown:
            parts = []
            if missing:
                parts.append("missing key(s) " + ", ".join(repr(k) for k in missing))
            if unknown:
                parts.append("unknown key(s) " + ", ".join(unknown))
            raise ValueError(f"precision: bad policy dict {policy!r}: {'; '.join(parts)} "
                             f"(expected exactly {', '.join(repr(k) for k in PASSES)})")
        out = []
        for k in PASSES:
            v = policy[k]
            if not isinstance(v, str) or v.lower() not in _NAMES:
                raise ValueError(f"precision: bad value {v!r} for {k!r}: expected one of "
                                 "'fp32', 'bf16', 'fp16', 'int8'")
            out.append(_NAMES[v.lower()])
        return tuple(out)
    raise TypeError(f"precision: a policy must be a str or a dict, got "
                    f"{type(policy).__name__}")


def _as_dict(t):
    return dict(zip(PASSES, t))


def resolve_policy(policy):
    """The dict {"forward", "backward_data", "backward_weight"} a policy means
    (raises ValueError / TypeError for a bad one)."""
    return _as_dict(_resolve(policy))


def set_precision(policy):
    """Sets the process-wide default policy."""
    global _default
    _default = _resolve(policy)


def get_precision():
    """The resolved policy in force now (innermost context, else the default)."""
    return _as_dict(current())


def current():
    """Internal: (forward, backward_data, backward_weight) in force now."""
    cur = _scope.current
    return _default if cur is None else cur


class precision(contextlib.ContextDecorator):
    """Scoped policy: `with et.precision("bf16"): ...` or `@et.precision("int8")`.
    Restores the previous one on exit, even on an exception."""

    def __init__(self, policy):
        self.policy = _resolve(policy)
        self._saved = []

    def _recreate_cm(self):
        # as a decorator, each call gets its own instance: calls from several
        # threads (or recursive ones) do not share the saved-policy stack
        return precision(_as_dict(self.policy))

    def __enter__(self):
        self._saved.append(_scope.current)
        _scope.current = self.policy
        return _as_dict(self.policy)

    def __exit__(self, *exc):
        _scope.current = self._saved.pop()
        return False

    @staticmethod
    def saved_bytes():
        return saved_activation_bytes()


def set_int8_reduce_range(on=True):
    """7-bit (True, the default) or 8-bit (False) int8 activations and
    gradients for the int8 passes, process-wide (see the module docstring)."""
    from . import _C
    _C.set_int8_reduce_range(bool(on))


def int8_reduce_range():
    """True when int8 activations / gradients use 7 bits (the default)."""
    from . import _C
    return _C.int8_reduce_range()


# ---------------------------------------------------------------------------
# per-module policies (Module.set_precision)
def call_with(policy, fn, *args, **kwargs):
    """Internal (Module.__call__): fn(*args, **kwargs) with the resolved
    `policy` in force, the previous one restored afterwards."""
    prev = _scope.current
    _scope.current = policy
    try:
        return fn(*args, **kwargs)
    finally:
        _scope.current = prev


def set_module_precision(module, policy):
    """module and all its submodules use `policy` (None: back to the
    context / process-wide one). Module.__call__ puts a module's own policy in
    force around its forward, so an inner module's policy wins over an outer's."""
    p = None if policy is None else _resolve(policy)
    for m in module.modules():
        if p is None:
            m.__dict__.pop("_precision", None)
        else:
            object.__setattr__(m, "_precision", p)
    return module


# ---------------------------------------------------------------------------
# bytes held by saved activations of live conv2d / linear nodes
_saved_bytes = 0


class _SavedToken:
    """Kept in a conv/linear node's saved tensors: counts its activation bytes
    while alive. The node drops its saved tensors after backward (or at once when
    nothing is recorded, or when the graph is freed), which releases the count."""
    __slots__ = ("nbytes",)

    def __init__(self, nbytes):
        global _saved_bytes
        self.nbytes = int(nbytes)
        _saved_bytes += self.nbytes

    def __del__(self):
        global _saved_bytes
        _saved_bytes -= self.nbytes


def saved_activation_bytes():
    """Bytes of activations (conv2d / linear inputs) currently saved for backward
    by live autograd nodes, at the forward's precision: fp32 inputs at 4 bytes per
    element, bf16 / fp16 at 2, int8 (kept quantized) at 1."""
    return _saved_bytes


precision.saved_activation_bytes = staticmethod(saved_activation_bytes)
