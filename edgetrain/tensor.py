"""edgetrain.Tensor: a NumPy array plus autograd bookkeeping.

`Tensor._data` is the array (arrays edgetrain allocates come from
`_C.empty`: 64-byte-aligned core storage, or from C kernels). Elementwise
arithmetic, reductions and reshapes run in NumPy; 2-D float32 `@` is a heavy
product and goes through `_C.matmul` on the current backend. Semantics follow
PyTorch: float32 by default, broadcasting with gradients summed back to the
input shapes, `.grad` accumulated across backward() calls.
"""
import numbers

import numpy as np

from . import _C
from . import autograd
from .autograd import Function, is_grad_enabled
from .backend import get_backend
from .errors import DtypeError, ShapeError

_DTYPES = {
    "float32": np.float32, "float": np.float32, "float64": np.float64,
    "double": np.float64, "float16": np.float16, "half": np.float16,
    "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32,
    "int": np.int32, "int64": np.int64, "long": np.int64, "bool": np.bool_,
}
_C_DTYPES = {"float32", "float16", "int8", "uint8", "int32", "int64"}


def _np_dtype(dtype):
    """Accepts "float32", numpy dtypes/types, and torch-like objects
    (anything whose str() ends with a known name, e.g. torch.float32)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype
    elif isinstance(dtype, (type, np.dtype)):
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    else:
        name = str(dtype)
    name = name.rsplit(".", 1)[-1]
    if name not in _DTYPES:
        _bad_dtype(dtype)
    return _DTYPES[name]


def _bad_dtype(dtype):
    raise DtypeError(f"unsupported dtype {dtype!r}: expected one of "
                     f"{', '.join(sorted(set(np.dtype(v).name for v in _DTYPES.values())))}")


def _alloc(shape, npdt):
    """An empty array on aligned core storage when the core knows the dtype."""
    name = np.dtype(npdt).name
    if name in _C_DTYPES:
        return _C.empty(tuple(int(s) for s in shape), name)
    return np.empty(shape, dtype=npdt)


def _copy_array(a, npdt):
    a = np.asarray(a)
    out = _alloc(a.shape, npdt)
    np.copyto(out, a, casting="unsafe")
    return out


def _normalize_shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(s) for s in shape)


def _fix_float(out, *operands):
    """NumPy promotes int/int division and int/float to float64; PyTorch
    gives float32 unless a float64 tensor is involved."""
    if out.dtype == np.float64 and not any(
            isinstance(o, np.ndarray) and o.dtype == np.float64 for o in operands):
        return out.astype(np.float32)
    return out


def _unbroadcast(g, shape):
    """Sums g down to `shape` (the reverse of broadcasting)."""
    if g.shape == tuple(shape):
        return g
    nd = g.ndim - len(shape)
    if nd > 0:
        g = g.sum(axis=tuple(range(nd)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _as_operand(x, like):
    """Tensor or scalar/array operand for a binary op with tensor `like`."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (numbers.Number, np.generic)) and not isinstance(x, np.ndarray):
        return x                     # python scalars stay "weak" (NEP 50)
    return Tensor._wrap(np.asarray(x, dtype=like._data.dtype
                                   if np.asarray(x).dtype.kind == "f" else None))


# ---------------------------------------------------------------------------
# differentiable primitives
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (np.shape(a), np.shape(b))
        return _fix_float(np.add(a, b), a, b)

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return _unbroadcast(g, sa), _unbroadcast(g, sb)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (np.shape(a), np.shape(b))
        return _fix_float(np.subtract(a, b), a, b)

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return _unbroadcast(g, sa), _unbroadcast(-g, sb)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _fix_float(np.multiply(a, b), a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = _unbroadcast(g * b, np.shape(a)) if ctx.needs_input_grad[0] else None
        gb = _unbroadcast(g * a, np.shape(b)) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            return _fix_float(np.true_divide(a, b), a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        with np.errstate(divide="ignore", invalid="ignore"):
            ga = _unbroadcast(g / b, np.shape(a)) if ctx.needs_input_grad[0] else None
            gb = (_unbroadcast(-g * a / (b * b), np.shape(b))
                  if ctx.needs_input_grad[1] else None)
        return ga, gb


class Pow(Function):
    @staticmethod
    def forward(ctx, a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            y = _fix_float(np.power(a, b), a, b)
        ctx.save_for_backward(a, b, y)
        return y

    @staticmethod
    def backward(ctx, g):
        a, b, y = ctx.saved_tensors
        ga = gb = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if ctx.needs_input_grad[0]:
                # _fix_float: a Python-int exponent makes b - 1 an int64
                # array, and float32 ** int64 is float64 in NumPy 2
                ga = _unbroadcast(_fix_float(g * b * np.power(a, np.subtract(b, 1)), a, b, g),
                                  np.shape(a))
            if ctx.needs_input_grad[1]:
                gb = _unbroadcast(_fix_float(g * y * np.log(a), a, b, g), np.shape(b))
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return np.negative(a)

    @staticmethod
    def backward(ctx, g):
        return -g


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        y = _fix_float(np.exp(a), a)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved_tensors[0]


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            return _fix_float(np.log(a), a)

    @staticmethod
    def backward(ctx, g):
        with np.errstate(divide="ignore", invalid="ignore"):
            return g / ctx.saved_tensors[0]


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        with np.errstate(invalid="ignore"):
            y = _fix_float(np.sqrt(a), a)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        with np.errstate(divide="ignore", invalid="ignore"):
            return g / (2 * ctx.saved_tensors[0])


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.abs(a)

    @staticmethod
    def backward(ctx, g):
        return g * np.sign(ctx.saved_tensors[0])


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        y = np.tanh(a)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensors[0]
        return g * (1 - y * y)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        y = (1 / (1 + np.exp(-a))).astype(a.dtype)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensors[0]
        return g * y * (1 - y)


class Clamp(Function):
    @staticmethod
    def forward(ctx, a, lo, hi):
        ctx.save_for_backward(a)
        ctx.lo, ctx.hi = lo, hi
        return np.clip(a, lo, hi)

    @staticmethod
    def backward(ctx, g):
        a = ctx.saved_tensors[0]
        m = np.ones(a.shape, dtype=bool)
        if ctx.lo is not None:
            m &= a >= ctx.lo
        if ctx.hi is not None:
            m &= a <= ctx.hi
        return g * m, None, None


def _aligned(a):
    """C-contiguous AND aligned, same shape (0-d stays 0-d): what _C accepts.
    Copies only when `a` is neither (e.g. a transposed view, or a float32
    array at an odd byte offset of a buffer)."""
    return np.require(a, requirements=("C", "A"))


class Relu(Function):
    """relu through the C kernel (float32). Saves the bit mask of y > 0 (uint8,
    ceil(numel / 8) bytes), not y: dx = dy where y > 0, the same values as from
    y at 1/32 of the memory (F.relu's node does the same)."""
    @staticmethod
    def forward(ctx, a):
        # np.require, not ascontiguousarray: that one makes 0-d arrays 1-d (a
        # 0-d relu came back with shape (1,) and its backward failed) and
        # returns misaligned contiguous arrays as they are (_C refuses them)
        if not (is_grad_enabled() and any(ctx.needs_input_grad)):
            return _C.relu_forward(_aligned(a))
        y, mask = _C.relu_forward_mask(_aligned(a))
        ctx.save_for_backward(mask)
        return y

    @staticmethod
    def backward(ctx, g):
        # the engine's gradient buffer, when it is ours alone, becomes dx (autograd._owned)
        return _C.relu_backward_mask(_aligned(g), ctx.saved_tensors[0], inplace=ctx._grad_owned)


def _axes(dim, ndim):
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, numbers.Integral) else tuple(dim)
    out = []
    for d in dims:
        d = int(d)
        if not -max(ndim, 1) <= d < max(ndim, 1):
            raise IndexError(f"Dimension out of range (expected to be in range of "
                             f"[{-max(ndim, 1)}, {max(ndim, 1) - 1}], but got {d})")
        out.append(d % max(ndim, 1))
    return tuple(out)


def _expand_reduced(g, shape, axes, keepdim):
    if axes is None:
        return np.broadcast_to(np.reshape(g, (1,) * len(shape)), shape)
    if not keepdim:
        g = np.expand_dims(g, tuple(sorted(a for a in axes if a < len(shape))))
    return np.broadcast_to(g, shape)


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axes, keepdim):
        ctx.shape, ctx.axes, ctx.keepdim = a.shape, axes, keepdim
        if a.ndim == 0:
            return a.copy()
        out = np.sum(a, axis=axes, keepdims=keepdim)
        if a.dtype.kind in "biu":
            out = out.astype(np.int64)
        return np.asarray(out)

    @staticmethod
    def backward(ctx, g):
        return np.array(_expand_reduced(g, ctx.shape, ctx.axes, ctx.keepdim)), None, None


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axes, keepdim):
        ctx.shape, ctx.axes, ctx.keepdim = a.shape, axes, keepdim
        if a.ndim == 0:
            return a.copy()
        n = a.size if axes is None else int(np.prod([a.shape[i] for i in axes]))
        ctx.n = n
        return np.asarray(np.mean(a, axis=axes, keepdims=keepdim), dtype=a.dtype)

    @staticmethod
    def backward(ctx, g):
        if len(ctx.shape) == 0:
            return g, None, None
        return (np.array(_expand_reduced(g, ctx.shape, ctx.axes, ctx.keepdim)) / ctx.n
                ).astype(g.dtype), None, None


class MaxReduce(Function):
    """max/min over all elements or one dim; the gradient goes to the
    selected element (dim) or is split evenly among ties (all, as torch)."""
    @staticmethod
    def forward(ctx, a, dim, keepdim, is_min):
        ctx.shape, ctx.dim, ctx.keepdim = a.shape, dim, keepdim
        if dim is None:
            y = np.asarray(a.min() if is_min else a.max())
            ctx.mask = (a == y)
            return y
        idx = np.argmin(a, axis=dim) if is_min else np.argmax(a, axis=dim)
        ctx.idx = np.expand_dims(idx, dim)
        y = np.take_along_axis(a, ctx.idx, axis=dim)
        return y if keepdim else np.squeeze(y, dim)

    @staticmethod
    def backward(ctx, g):
        if ctx.dim is None:
            m = ctx.mask
            return (g * m / m.sum()).astype(g.dtype), None, None, None
        out = np.zeros(ctx.shape, dtype=g.dtype)
        if not ctx.keepdim:
            g = np.expand_dims(g, ctx.dim)
        np.put_along_axis(out, ctx.idx, g, axis=ctx.dim)
        return out, None, None, None


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return np.reshape(a, shape)

    @staticmethod
    def backward(ctx, g):
        return np.reshape(g, ctx.shape), None


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        return np.transpose(a, axes)

    @staticmethod
    def backward(ctx, g):
        return np.transpose(g, np.argsort(ctx.axes)), None


class Expand(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return np.broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, g):
        return _unbroadcast(g, ctx.shape), None


def _has_advanced(key):
    key = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (list, np.ndarray)) for k in key)


def _convert_key(key):
    if isinstance(key, Tensor):
        return key._data
    if isinstance(key, tuple):
        return tuple(k._data if isinstance(k, Tensor) else k for k in key)
    return key


class GetItem(Function):
    @staticmethod
    def forward(ctx, a, key):
        ctx.shape, ctx.dtype, ctx.key = a.shape, a.dtype, key
        out = a[key]
        return np.array(out) if _has_advanced(key) or np.ndim(out) == 0 else out

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, dtype=g.dtype)
        if _has_advanced(ctx.key):
            np.add.at(out, ctx.key, g)
        else:
            out[ctx.key] = g
        return out, None


class MatMul2D(Function):
    """(M,K) @ (K,N) float32: three matmul primitives on the backend."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.backend = get_backend()
        a = _aligned(a)
        b = _aligned(b)
        ctx.save_for_backward(a, b)
        return _C.matmul(a, b, backend=ctx.backend)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = _aligned(g)
        ga = gb = None
        if ctx.needs_input_grad[0]:       # dA (M,K) = dY (M,N) @ B^T
            ga = _C.matmul(g, b, trans_b=True, backend=ctx.backend)
        if ctx.needs_input_grad[1]:       # dB (K,N) = A^T @ dY
            gb = _C.matmul(a, g, trans_a=True, backend=ctx.backend)
        return ga, gb


class MatMulND(Function):
    """Batched / non-float32 matmul in NumPy (both operands >= 2-D)."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return np.matmul(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = _unbroadcast(np.matmul(g, np.swapaxes(b, -1, -2)), a.shape)
        if ctx.needs_input_grad[1]:
            gb = _unbroadcast(np.matmul(np.swapaxes(a, -1, -2), g), b.shape)
        return ga, gb


class Cat(Function):
    @staticmethod
    def forward(ctx, dim, *arrays):
        ctx.dim = dim
        ctx.sizes = [a.shape[dim] for a in arrays]
        return np.concatenate(arrays, axis=dim)

    @staticmethod
    def backward(ctx, g):
        splits = np.cumsum(ctx.sizes)[:-1]
        return (None,) + tuple(np.split(g, splits, axis=ctx.dim))


class Stack(Function):
    @staticmethod
    def forward(ctx, dim, *arrays):
        ctx.dim = dim
        return np.stack(arrays, axis=dim)

    @staticmethod
    def backward(ctx, g):
        return (None,) + tuple(np.moveaxis(g, ctx.dim, 0))


class Cast(Function):
    @staticmethod
    def forward(ctx, a, npdt):
        ctx.dtype = a.dtype
        return a.astype(npdt)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.dtype), None


# ---------------------------------------------------------------------------
class Tensor:
    """A multi-dimensional array with autograd, PyTorch-style."""

    __array_priority__ = 1000          # ndarray + Tensor -> Tensor.__radd__
    __hash__ = object.__hash__

    def __init__(self, data=None, dtype=None, requires_grad=False):
        if data is None:
            data = np.empty((0,), dtype=np.float32)
        if isinstance(data, Tensor):
            data = data._data
        npdt = _np_dtype(dtype) or np.float32
        self._data = _copy_array(data, npdt)
        self.grad = None
        self.grad_fn = None
        self._requires_grad = False
        self.requires_grad = requires_grad

    @classmethod
    def _wrap(cls, array, requires_grad=False):
        t = cls.__new__(cls)
        t._data = array if isinstance(array, np.ndarray) else np.asarray(array)
        t.grad = None
        t.grad_fn = None
        t._requires_grad = bool(requires_grad)
        return t

    # -- autograd attributes ------------------------------------------------
    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        value = bool(value)
        if self.grad_fn is not None and not value:
            raise RuntimeError("you can only change requires_grad flags of leaf "
                               "variables. If you want to use a computed variable in "
                               "a subgraph that doesn't require differentiation use "
                               "var_no_grad = var.detach().")
        if value and self._data.dtype.kind not in "fc":
            raise RuntimeError("only Tensors of floating point and complex dtype "
                               f"can require gradients (got {self.dtype})")
        self._requires_grad = value

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self):
        return self.grad_fn is None

    def retain_grad(self):
        if self.grad_fn is not None:
            self.grad_fn._retained = self

    def backward(self, gradient=None, retain_graph=None, create_graph=False):
        if create_graph:
            raise NotImplementedError("backward(create_graph=True): higher-order "
                                      "gradients are not supported")
        if not self.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does "
                               "not have a grad_fn")
        if gradient is None:
            if self._data.size != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            g = np.ones(self.shape, dtype=self._data.dtype)
        else:
            g = gradient._data if isinstance(gradient, Tensor) else np.asarray(gradient)
            if g.shape != self.shape:
                raise RuntimeError(f"Mismatch in shape: grad_output[0] has a shape of "
                                   f"{g.shape} and output[0] has a shape of {self.shape}.")
            g = g.astype(self._data.dtype, copy=False)
        autograd.run_backward(self, g, retain_graph=bool(retain_graph))

    def detach(self):
        return Tensor._wrap(self._data)

    def detach_(self):
        self.grad_fn = None
        self._requires_grad = False
        return self

    # -- array attributes ---------------------------------------------------
    @property
    def data(self):
        return Tensor._wrap(self._data)

    @data.setter
    def data(self, value):
        self._data = value._data if isinstance(value, Tensor) else np.asarray(value)

    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def dtype(self):
        return self._data.dtype.name

    @property
    def device(self):
        return "cpu"

    @property
    def is_cuda(self):
        return False

    def dim(self):
        return self._data.ndim

    def size(self, dim=None):
        if dim is None:
            return self.shape
        return self.shape[_axes(dim, self.ndim)[0]]

    def numel(self):
        return int(self._data.size)

    def element_size(self):
        return self._data.itemsize

    def is_contiguous(self):
        return bool(self._data.flags.c_contiguous)

    def contiguous(self):
        if self.is_contiguous():
            return self
        return self.clone()

    def numpy(self):
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        return self._data

    def __array__(self, dtype=None, copy=None):
        a = self._data
        if dtype is not None:
            a = a.astype(dtype)
        return np.array(a, copy=True) if copy else a

    def tolist(self):
        return self._data.tolist()

    def item(self):
        if self._data.size != 1:
            raise RuntimeError(f"a Tensor with {self._data.size} elements cannot be "
                               "converted to Scalar")
        return self._data.reshape(()).item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self._data.dtype.kind not in "iu" or self._data.size != 1:
            raise TypeError("only integer tensors of a single element can be "
                            "converted to an index")
        return int(self.item())

    def __bool__(self):
        if self._data.size != 1:
            raise RuntimeError("Boolean value of Tensor with more than one value "
                               "is ambiguous")
        return bool(self.item())

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self):
        a = self._data
        prefix = "tensor("
        if a.dtype.kind == "f":
            body = np.array2string(a, separator=", ", prefix=prefix, precision=4,
                                   floatmode="fixed" if np.any(a != np.round(a)) else "unique",
                                   suppress_small=False)
            if a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
                body = np.array2string(a, separator=", ", prefix=prefix,
                                       formatter={"float_kind": lambda v: f"{v:.0f}."})
        else:
            body = np.array2string(a, separator=", ", prefix=prefix)
        extras = []
        if a.dtype not in (np.float32, np.int64, np.bool_):
            extras.append(f"dtype=edgetrain.{a.dtype.name}")
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{self.grad_fn.name()}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return prefix + body + "".join(", " + e for e in extras) + ")"

    # -- copies, dtypes -----------------------------------------------------
    def clone(self):
        return Mul.apply(self, 1) if self.requires_grad and is_grad_enabled() else \
            Tensor._wrap(_copy_array(self._data, self._data.dtype))

    def to(self, *args, **kwargs):
        dtype = kwargs.get("dtype")
        for a in args:
            if isinstance(a, Tensor):
                dtype = a.dtype
            elif not (isinstance(a, str) and a in ("cpu", "cuda")) and str(a) != "cpu":
                dtype = a
        if dtype is None:
            return self
        npdt = _np_dtype(dtype)
        if npdt == self._data.dtype:
            return self
        if self.requires_grad and is_grad_enabled() and np.dtype(npdt).kind == "f":
            return Cast.apply(self, npdt)
        return Tensor._wrap(_copy_array(self._data, npdt))

    def type(self, dtype=None):
        if dtype is None:
            return "edgetrain." + {"float32": "FloatTensor", "float64": "DoubleTensor",
                                   "int64": "LongTensor", "int32": "IntTensor",
                                   "uint8": "ByteTensor", "int8": "CharTensor",
                                   "bool": "BoolTensor", "float16": "HalfTensor"}.get(
                self.dtype, self.dtype)
        return self.to(dtype)

    def float(self):
        return self.to("float32")

    def double(self):
        return self.to("float64")

    def long(self):
        return self.to("int64")

    def int(self):
        return self.to("int32")

    def bool(self):
        return self.to("bool")

    def half(self):
        return self.to("float16")

    def cpu(self):
        return self

    # -- in-place (no autograd: for optimizers, init, no_grad code) ----------
    def _check_inplace(self):
        if self.requires_grad and self.grad_fn is None and is_grad_enabled():
            raise RuntimeError("a leaf Variable that requires grad is being used in "
                               "an in-place operation.")

    def zero_(self):
        self._check_inplace()
        self._data[...] = 0
        return self

    def fill_(self, value):
        self._check_inplace()
        self._data[...] = value._data if isinstance(value, Tensor) else value
        return self

    def copy_(self, src):
        self._check_inplace()
        src = src._data if isinstance(src, Tensor) else np.asarray(src)
        np.copyto(self._data, np.broadcast_to(src, self.shape), casting="unsafe")
        return self

    def add_(self, other, alpha=1):
        self._check_inplace()
        o = other._data if isinstance(other, Tensor) else other
        self._data += (o * alpha if alpha != 1 else o)
        return self

    def sub_(self, other, alpha=1):
        return self.add_(other, alpha=-alpha)

    def mul_(self, other):
        self._check_inplace()
        self._data *= other._data if isinstance(other, Tensor) else other
        return self

    def div_(self, other):
        self._check_inplace()
        self._data /= other._data if isinstance(other, Tensor) else other
        return self

    def uniform_(self, a=0.0, b=1.0):
        from .random import default_generator
        self._check_inplace()
        self._data[...] = default_generator().uniform(a, b, self.shape)
        return self

    def normal_(self, mean=0.0, std=1.0):
        from .random import default_generator
        self._check_inplace()
        self._data[...] = default_generator().normal(mean, std, self.shape)
        return self

    def __setitem__(self, key, value):
        self._check_inplace()
        if self.grad_fn is not None and is_grad_enabled():
            raise NotImplementedError("in-place assignment into a tensor that is part "
                                      "of an autograd graph is not supported")
        self._data[_convert_key(key)] = value._data if isinstance(value, Tensor) else value

    # -- arithmetic ---------------------------------------------------------
    def __add__(self, o):
        return Add.apply(self, _as_operand(o, self))

    def __radd__(self, o):
        return Add.apply(_as_operand(o, self), self)

    def __sub__(self, o):
        return Sub.apply(self, _as_operand(o, self))

    def __rsub__(self, o):
        return Sub.apply(_as_operand(o, self), self)

    def __mul__(self, o):
        return Mul.apply(self, _as_operand(o, self))

    def __rmul__(self, o):
        return Mul.apply(_as_operand(o, self), self)

    def __truediv__(self, o):
        return Div.apply(self, _as_operand(o, self))

    def __rtruediv__(self, o):
        return Div.apply(_as_operand(o, self), self)

    def __pow__(self, o):
        return Pow.apply(self, _as_operand(o, self))

    def __rpow__(self, o):
        return Pow.apply(_as_operand(o, self), self)

    def __neg__(self):
        return Neg.apply(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return Abs.apply(self)

    def __iadd__(self, o):
        if self.requires_grad and is_grad_enabled():
            return self + o
        return self.add_(o)

    def __isub__(self, o):
        if self.requires_grad and is_grad_enabled():
            return self - o
        return self.sub_(o)

    def __imul__(self, o):
        if self.requires_grad and is_grad_enabled():
            return self * o
        return self.mul_(o)

    def __itruediv__(self, o):
        if self.requires_grad and is_grad_enabled():
            return self / o
        return self.div_(o)

    def add(self, o, alpha=1):
        return self + (o * alpha if alpha != 1 else o)

    def sub(self, o, alpha=1):
        return self - (o * alpha if alpha != 1 else o)

    def mul(self, o):
        return self * o

    def div(self, o):
        return self / o

    def pow(self, o):
        return self ** o

    def neg(self):
        return -self

    def abs(self):
        return Abs.apply(self)

    def exp(self):
        return Exp.apply(self)

    def log(self):
        return Log.apply(self)

    def sqrt(self):
        return Sqrt.apply(self)

    def tanh(self):
        return Tanh.apply(self)

    def sigmoid(self):
        return Sigmoid.apply(self)

    def relu(self):
        return Relu.apply(self)

    def clamp(self, min=None, max=None):
        return Clamp.apply(self, min, max)

    clip = clamp

    def __matmul__(self, o):
        return matmul(self, o)

    def __rmatmul__(self, o):
        return matmul(_as_operand(o, self), self)

    def matmul(self, o):
        return matmul(self, o)

    def mm(self, o):
        return matmul(self, o)

    # -- comparisons (no grad, bool tensors) ----------------------------------
    def _cmp(self, o, op):
        o = o._data if isinstance(o, Tensor) else o
        return Tensor._wrap(np.asarray(op(self._data, o)))

    def __eq__(self, o):
        return self._cmp(o, np.equal)

    def __ne__(self, o):
        return self._cmp(o, np.not_equal)

    def __lt__(self, o):
        return self._cmp(o, np.less)

    def __le__(self, o):
        return self._cmp(o, np.less_equal)

    def __gt__(self, o):
        return self._cmp(o, np.greater)

    def __ge__(self, o):
        return self._cmp(o, np.greater_equal)

    eq, ne, lt, le, gt, ge = __eq__, __ne__, __lt__, __le__, __gt__, __ge__

    def __invert__(self):
        return Tensor._wrap(np.invert(self._data))

    def __and__(self, o):
        return self._cmp(o, np.bitwise_and)

    def __or__(self, o):
        return self._cmp(o, np.bitwise_or)

    def equal(self, o):
        return self.shape == o.shape and bool(np.array_equal(self._data, o._data))

    def allclose(self, o, rtol=1e-5, atol=1e-8):
        o = o._data if isinstance(o, Tensor) else o
        return bool(np.allclose(self._data, o, rtol=rtol, atol=atol))

    # -- reductions -----------------------------------------------------------
    def sum(self, dim=None, keepdim=False, dtype=None):
        t = self.to(dtype) if dtype is not None else self
        return Sum.apply(t, _axes(dim, self.ndim), bool(keepdim))

    def mean(self, dim=None, keepdim=False, dtype=None):
        t = self.to(dtype) if dtype is not None else self
        if t._data.dtype.kind not in "fc":
            raise RuntimeError(f"mean(): could not infer output dtype. Input dtype must "
                               f"be either a floating point or complex dtype. Got: {t.dtype}")
        return Mean.apply(t, _axes(dim, self.ndim), bool(keepdim))

    def var(self, dim=None, unbiased=True, keepdim=False, correction=None):
        axes = _axes(dim, self.ndim)
        n = self.numel() if axes is None else int(np.prod([self.shape[i] for i in axes]))
        c = (1 if unbiased else 0) if correction is None else correction
        d = self - self.mean(dim=dim, keepdim=True)
        return (d * d).sum(dim=dim, keepdim=keepdim) / max(n - c, 0)

    def std(self, dim=None, unbiased=True, keepdim=False, correction=None):
        return self.var(dim, unbiased, keepdim, correction).sqrt()

    def _reduce_max(self, dim, keepdim, is_min):
        from collections import namedtuple
        if dim is None:
            if self.numel() == 0:
                raise RuntimeError("max(): Expected reduction dim to be specified for "
                                   "input.numel() == 0.")
            return MaxReduce.apply(self, None, False, is_min)
        d = _axes(dim, self.ndim)[0]
        values = MaxReduce.apply(self, d, bool(keepdim), is_min)
        idx = self.argmin(d, keepdim) if is_min else self.argmax(d, keepdim)
        return _MaxResult(values, idx)

    def max(self, dim=None, keepdim=False):
        if isinstance(dim, Tensor):
            return maximum(self, dim)
        return self._reduce_max(dim, keepdim, False)

    def min(self, dim=None, keepdim=False):
        if isinstance(dim, Tensor):
            return minimum(self, dim)
        return self._reduce_max(dim, keepdim, True)

    def argmax(self, dim=None, keepdim=False):
        if dim is None:
            out = np.asarray(np.argmax(self._data), dtype=np.int64)
            return Tensor._wrap(out.reshape((1,) * self.ndim) if keepdim else out)
        d = _axes(dim, self.ndim)[0]
        return Tensor._wrap(np.asarray(np.argmax(self._data, axis=d, keepdims=keepdim),
                                       dtype=np.int64))

    def argmin(self, dim=None, keepdim=False):
        if dim is None:
            out = np.asarray(np.argmin(self._data), dtype=np.int64)
            return Tensor._wrap(out.reshape((1,) * self.ndim) if keepdim else out)
        d = _axes(dim, self.ndim)[0]
        return Tensor._wrap(np.asarray(np.argmin(self._data, axis=d, keepdims=keepdim),
                                       dtype=np.int64))

    def all(self):
        return Tensor._wrap(np.asarray(np.all(self._data)))

    def any(self):
        return Tensor._wrap(np.asarray(np.any(self._data)))

    # -- shapes -------------------------------------------------------------
    def _resolve_shape(self, shape):
        shape = _normalize_shape(shape)
        if shape.count(-1) > 1:
            raise RuntimeError("only one dimension can be inferred")
        known = int(np.prod([s for s in shape if s != -1])) if shape else 1
        n = self.numel()
        if -1 in shape:
            if known == 0 or n % known:
                raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n}")
            shape = tuple(n // known if s == -1 else s for s in shape)
        if any(s < 0 for s in shape) or int(np.prod(shape)) != n:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n}")
        return shape

    def reshape(self, *shape):
        shape = self._resolve_shape(shape)
        if shape == self.shape:
            return self
        return Reshape.apply(self, shape)

    def view(self, *shape):
        if len(shape) == 1 and not isinstance(shape[0], (tuple, list, int, np.integer)):
            return self.to(shape[0])
        return self.reshape(*shape)

    def view_as(self, other):
        return self.reshape(other.shape)

    def reshape_as(self, other):
        return self.reshape(other.shape)

    def flatten(self, start_dim=0, end_dim=-1):
        if self.ndim == 0:
            return self.reshape(1)
        s = _axes(start_dim, self.ndim)[0]
        e = _axes(end_dim, self.ndim)[0]
        if s > e:
            raise RuntimeError("flatten() has invalid args: start_dim cannot come "
                               "after end_dim")
        shape = self.shape[:s] + (int(np.prod(self.shape[s:e + 1])),) + self.shape[e + 1:]
        return self.reshape(shape)

    def unflatten(self, dim, sizes):
        d = _axes(dim, self.ndim)[0]
        return self.reshape(self.shape[:d] + tuple(sizes) + self.shape[d + 1:])

    def squeeze(self, dim=None):
        if dim is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        d = _axes(dim, self.ndim)
        return self.reshape(tuple(s for i, s in enumerate(self.shape)
                                  if not (i in d and s == 1)))

    def unsqueeze(self, dim):
        d = _axes(dim, self.ndim + 1)[0]
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def permute(self, *dims):
        dims = _normalize_shape(dims)
        if sorted(d % max(self.ndim, 1) for d in dims) != list(range(self.ndim)):
            raise RuntimeError(f"permute(): dims {dims} do not match the tensor's "
                               f"{self.ndim} dimensions")
        return Permute.apply(self, tuple(d % max(self.ndim, 1) for d in dims))

    def transpose(self, dim0, dim1):
        axes = list(range(self.ndim))
        d0, d1 = _axes(dim0, self.ndim)[0], _axes(dim1, self.ndim)[0]
        axes[d0], axes[d1] = axes[d1], axes[d0]
        return Permute.apply(self, tuple(axes))

    def t(self):
        if self.ndim > 2:
            raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self "
                               f"is {self.ndim}D")
        return self if self.ndim < 2 else self.transpose(0, 1)

    @property
    def T(self):
        return Permute.apply(self, tuple(reversed(range(self.ndim))))

    def expand(self, *shape):
        shape = _normalize_shape(shape)
        nd = len(shape) - self.ndim
        full = tuple(self.shape[i - nd] if s == -1 else s for i, s in enumerate(shape))
        return Expand.apply(self, full)

    def expand_as(self, other):
        return self.expand(other.shape)

    def __getitem__(self, key):
        return GetItem.apply(self, _convert_key(key))

    def chunk(self, chunks, dim=0):
        d = _axes(dim, self.ndim)[0]
        size = -(-self.shape[d] // chunks)
        return self.split(size, d)

    def split(self, split_size, dim=0):
        d = _axes(dim, self.ndim)[0]
        n = self.shape[d]
        sizes = ([split_size] * (n // split_size) + ([n % split_size] if n % split_size else [])
                 if isinstance(split_size, int) else list(split_size))
        out, start = [], 0
        for s in sizes:
            idx = [slice(None)] * self.ndim
            idx[d] = slice(start, start + s)
            out.append(self[tuple(idx)])
            start += s
        return tuple(out)


class _MaxResult(tuple):
    """(values, indices) like torch.return_types.max."""
    def __new__(cls, values, indices):
        return super().__new__(cls, (values, indices))

    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])


# ---------------------------------------------------------------------------
# functions on tensors
def _t(x):
    return x if isinstance(x, Tensor) else tensor(x)


def matmul(a, b):
    a, b = _t(a), _t(b)
    if a.ndim == 0 or b.ndim == 0:
        raise RuntimeError("both arguments to matmul need to be at least 1D, but they "
                           f"are {a.ndim}D and {b.ndim}D")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        sa = "x".join(map(str, a.shape if a.ndim > 1 else (1,) + a.shape))
        sb = "x".join(map(str, b.shape if b.ndim > 1 else b.shape + (1,)))
        raise ShapeError(f"matmul: mat1 and mat2 shapes cannot be multiplied "
                         f"({sa} and {sb}): a {a.shape}, b {b.shape}")
    if a.ndim == 1 and b.ndim == 1:
        return (a * b).sum()
    squeeze_front = a.ndim == 1
    squeeze_back = b.ndim == 1
    if squeeze_front:
        a = a.reshape(1, -1)
    if squeeze_back:
        b = b.reshape(-1, 1)
    if a.ndim == 2 and b.ndim == 2 and a._data.dtype == np.float32 \
            and b._data.dtype == np.float32:
        y = MatMul2D.apply(a, b)
    else:
        y = MatMulND.apply(a, b)
    if squeeze_front:
        y = y.squeeze(-2)
    if squeeze_back:
        y = y.squeeze(-1)
    return y


def maximum(a, b):
    a, b = _t(a), _t(b)
    m = (a._data >= b._data)
    return a * Tensor._wrap(m.astype(a._data.dtype)) + b * Tensor._wrap((~m).astype(b._data.dtype))


def minimum(a, b):
    a, b = _t(a), _t(b)
    m = (a._data <= b._data)
    return a * Tensor._wrap(m.astype(a._data.dtype)) + b * Tensor._wrap((~m).astype(b._data.dtype))


def tensor(data, dtype="float32", requires_grad=False):
    """Copies `data` (array_like, Tensor, or an object with .numpy()) into a
    new tensor of `dtype` (float32 by default, as api.md states)."""
    if isinstance(data, Tensor):
        data = data._data
    elif not isinstance(data, np.ndarray) and hasattr(data, "numpy"):
        data = _to_numpy(data)
    npdt = _np_dtype(dtype) if dtype is not None else None
    arr = np.asarray(data) if not isinstance(data, (list, tuple)) else np.array(
        [_to_numpy(d) if isinstance(d, Tensor) else d for d in data])
    if arr.dtype.kind in "OUSV":
        raise DtypeError(f"tensor: could not convert data of type {type(data).__name__} "
                         "to a numeric array")
    if npdt is None:
        npdt = np.float32 if arr.dtype.kind == "f" else (
            np.int64 if arr.dtype.kind in "iu" else arr.dtype.type)
    t = Tensor._wrap(_copy_array(arr, npdt))
    t.requires_grad = requires_grad
    return t


def _to_numpy(x):
    if isinstance(x, Tensor):
        return x._data
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    return np.asarray(x)


as_tensor = tensor


def from_numpy(array):
    """Zero-copy: the tensor shares `array`'s memory (any strides; ops that
    need C-contiguous data copy internally)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected numpy.ndarray, got {type(array).__name__}")
    if array.dtype.name not in {np.dtype(v).name for v in _DTYPES.values()}:
        raise DtypeError(f"from_numpy: can't convert np.ndarray of type {array.dtype}. "
                         "The only supported types are: float64, float32, float16, "
                         "int64, int32, int16, int8, uint8, and bool.")
    return Tensor._wrap(array)


def _factory(shape, dtype, requires_grad, fill=None):
    shape = _normalize_shape(shape)
    if any(s < 0 for s in shape):
        raise ShapeError(f"negative dimension in shape {shape}")
    npdt = _np_dtype(dtype) or np.float32
    a = _alloc(shape, npdt)
    if fill is not None:
        a[...] = fill
    t = Tensor._wrap(a)
    t.requires_grad = requires_grad
    return t


def zeros(*size, dtype="float32", requires_grad=False):
    return _factory(size, dtype, requires_grad, 0)


def ones(*size, dtype="float32", requires_grad=False):
    return _factory(size, dtype, requires_grad, 1)


def empty(*size, dtype="float32", requires_grad=False):
    return _factory(size, dtype, requires_grad)


def full(size, fill_value, dtype="float32", requires_grad=False):
    return _factory(size, dtype, requires_grad, fill_value)


def zeros_like(t, dtype=None, requires_grad=False):
    return zeros(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return ones(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def full_like(t, fill_value, dtype=None, requires_grad=False):
    return full(t.shape, fill_value, dtype=dtype or t.dtype, requires_grad=requires_grad)


def randn(*size, dtype="float32", requires_grad=False, generator=None):
    from .random import default_generator
    t = _factory(size, dtype, False)
    t._data[...] = (generator or default_generator()).standard_normal(t.shape)
    t.requires_grad = requires_grad
    return t


def rand(*size, dtype="float32", requires_grad=False, generator=None):
    from .random import default_generator
    t = _factory(size, dtype, False)
    t._data[...] = (generator or default_generator()).random(t.shape)
    t.requires_grad = requires_grad
    return t


def randint(low, high=None, size=None, dtype="int64", generator=None):
    from .random import default_generator
    if high is None:
        low, high = 0, low
    t = _factory(size, dtype, False)
    t._data[...] = (generator or default_generator()).integers(low, high, t.shape)
    return t


def randperm(n, dtype="int64", generator=None):
    from .random import default_generator
    return Tensor._wrap((generator or default_generator()).permutation(int(n)).astype(
        _np_dtype(dtype)))


def arange(start, end=None, step=1, dtype=None, requires_grad=False):
    if end is None:
        start, end = 0, start
    if dtype is None:
        dtype = "int64" if all(isinstance(v, (int, np.integer)) for v in (start, end, step)) \
            else "float32"
    t = Tensor._wrap(np.arange(start, end, step).astype(_np_dtype(dtype)))
    t.requires_grad = requires_grad
    return t


def linspace(start, end, steps, dtype="float32"):
    return Tensor._wrap(np.linspace(start, end, steps).astype(_np_dtype(dtype)))


def eye(n, m=None, dtype="float32"):
    return Tensor._wrap(np.eye(n, m, dtype=_np_dtype(dtype)))


def _check_dim_list(tensors, name):
    if isinstance(tensors, Tensor) or not len(tensors):
        raise ShapeError(f"{name}(): expected a non-empty list of Tensors")
    return [_t(t) for t in tensors]


def cat(tensors, dim=0):
    ts = _check_dim_list(tensors, "cat")
    d = _axes(dim, ts[0].ndim)[0]
    for t in ts[1:]:
        if t.ndim != ts[0].ndim or any(t.shape[i] != ts[0].shape[i]
                                       for i in range(t.ndim) if i != d):
            raise ShapeError(f"cat(): sizes of tensors must match except in dimension "
                             f"{d}: got {ts[0].shape} and {t.shape}")
    return Cat.apply(d, *ts)


concat = cat


def stack(tensors, dim=0):
    ts = _check_dim_list(tensors, "stack")
    for t in ts[1:]:
        if t.shape != ts[0].shape:
            raise ShapeError(f"stack expects each tensor to be equal size, but got "
                             f"{ts[0].shape} and {t.shape}")
    d = _axes(dim, ts[0].ndim + 1)[0]
    return Stack.apply(d, *ts)


def numel(x):
    return _t(x).numel()


def is_tensor(x):
    return isinstance(x, Tensor)


def allclose(a, b, rtol=1e-5, atol=1e-8):
    return _t(a).allclose(b, rtol, atol)


def equal(a, b):
    return _t(a).equal(_t(b))


def where(cond, a, b):
    cond = _t(cond)._data.astype(bool)
    a, b = _t(a), _t(b)
    m = Tensor._wrap(cond.astype(np.float32))
    return a * m + b * (1 - m)
