"""Which backend runs the heavy products (conv/matmul, forward and backward).

    et.backends()              # ["ref", "blas", "onednn"] (built and usable)
    et.set_backend("blas")     # process-wide default
    with et.backend("ref"):    # scoped, this thread only; also a decorator
        ...

Ops read get_backend() when they run and pass it to edgetrain._C as
`backend=`; the default is "onednn" when built, else "blas", else "ref".
"""
import contextlib
import functools
import threading

from . import _C
from .errors import ShapeError

_current = None   # process-wide (set_backend); None: _default() on first use


class _Scope(threading.local):
    """The innermost et.backend(...) scope, per thread: a scope in one thread
    does not move another thread's ops (as PyTorch's `with torch.device`).
    None: the process-wide backend is in force."""
    name = None


_scope = _Scope()


def backends():
    """Names of the backends built and usable in this process, ref first."""
    return list(_C.backends())


def _default():
    avail = backends()
    for name in ("onednn", "blas", "ref"):
        if name in avail:
            return name
    return avail[0] if avail else "ref"


def _check(name):
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    avail = backends()
    if name not in avail:
        raise ShapeError(f"unknown backend {name!r}: available backends are "
                         f"{', '.join(repr(a) for a in avail)}")
    return name


def set_backend(name):
    """Sets the process-wide backend; unknown names raise ValueError."""
    global _current
    _current = _check(name)


def get_backend():
    """The backend ops use now (this thread's innermost scope, else the
    process-wide one)."""
    global _current
    scoped = _scope.name
    if scoped is not None:
        return scoped
    if _current is None:
        _current = _default()
    return _current


class backend(contextlib.ContextDecorator):
    """Scoped backend: `with et.backend("ref"): ...` or `@et.backend("ref")`.
    Restores the previous backend on exit, even on an exception."""

    def __init__(self, name):
        self.name = _check(name)
        self._saved = []

    def _recreate_cm(self):
        # as a decorator, each call gets its own instance: calls from several
        # threads do not share the saved-scope stack
        return backend(self.name)

    def __enter__(self):
        self._saved.append(_scope.name)
        _scope.name = self.name
        return self.name

    def __exit__(self, *exc):
        _scope.name = self._saved.pop()
        return False


def cache_stats():
    """{"hits", "misses", "evictions", "size", "capacity"} of the oneDNN
    primitive cache."""
    return dict(_C.cache_stats())


def set_cache_capacity(n):
    """Bounds the oneDNN primitive cache to n entries (n >= 1)."""
    n = int(n)
    if n < 1:
        raise ShapeError(f"set_cache_capacity: capacity must be >= 1, got {n}")
    _C.set_cache_capacity(n)


def clear_cache():
    _C.clear_cache()


__all__ = ["backends", "set_backend", "get_backend", "backend", "cache_stats",
           "set_cache_capacity", "clear_cache"]
