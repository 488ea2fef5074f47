"""edgetrain.nn.functional: PyTorch's functional layer API.

Every op here is an autograd Function whose forward and backward call
edgetrain._C: conv2d / linear products go through the accelerator queue on
the current backend (read when the op runs, kept for its backward), the CPU
kernels (relu, pooling, batch_norm, log_softmax, nll_loss) run in C. Inputs
are validated here first so that a bad call raises a ValueError/TypeError
naming the op and the shapes, never a crash.
"""
import numbers
import os
import warnings

import numpy as np

from .. import _C
from ..autograd import Function, is_grad_enabled
from ..precision import FP32 as _FP32, _SavedToken, current as _current_policy
from ..backend import get_backend
from ..errors import DtypeError, ShapeError, UnsupportedError
from ..random import default_generator
from ..tensor import Tensor, _t

__all__ = ["conv2d", "linear", "relu", "relu_", "relu6", "hardtanh", "max_pool2d", "avg_pool2d",
           "adaptive_avg_pool2d", "batch_norm", "dropout", "log_softmax", "softmax",
           "cross_entropy", "nll_loss", "flatten", "pad", "mse_loss", "one_hot"]


def _c(a):
    """C-contiguous aligned ndarray for _C. np.require, not ascontiguousarray:
    that one returns a misaligned contiguous array (e.g. float32 at an odd
    byte offset of a buffer) as it is, which _C refuses, and makes 0-d arrays
    1-d."""
    return np.require(a, requirements=("C", "A"))


def _pair(v, op, name, allow_zero=True, allow_neg=False):
    if isinstance(v, Tensor):
        v = v.tolist()
    if isinstance(v, (numbers.Integral,)) and not isinstance(v, bool):
        v = (int(v), int(v))
    else:
        try:
            v = tuple(v)
        except TypeError:
            raise TypeError(f"{op}: {name} must be an int or a tuple of 2 ints, got "
                            f"{type(v).__name__}") from None
        if len(v) == 1:
            v = (v[0], v[0])
        if len(v) != 2 or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                  for i in v):
            raise ShapeError(f"{op}: {name} must be an int or a tuple of 2 ints, got {v!r}")
        v = (int(v[0]), int(v[1]))
    lo = -np.inf if allow_neg else (0 if allow_zero else 1)
    if v[0] < lo or v[1] < lo:
        raise ShapeError(f"{op}: {name} must be {'non-negative' if allow_zero else 'positive'}"
                         f", got {v}")
    return v


def _check_float(t, op, name="input"):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be an edgetrain Tensor, got {type(t).__name__}")
    if t._data.dtype != np.float32:
        raise DtypeError(f"{op}: expected {name} of dtype float32, got {t.dtype} "
                         f"(shape {t.shape}); convert with .float()")


def _check_4d(x, op):
    _check_float(x, op)
    if x.ndim != 4:
        raise ShapeError(f"{op}: expected a 4D input (N, C, H, W), got {x.ndim}D input of "
                         f"shape {x.shape}")
    if any(s == 0 for s in x.shape[1:]):
        raise ShapeError(f"{op}: input of shape {x.shape} has a zero-sized dimension")


def _unbatched(x, op):
    """(C, H, W) -> (1, C, H, W) like PyTorch's unbatched inputs."""
    if isinstance(x, Tensor) and x.ndim == 3:
        return x.unsqueeze(0), True
    return x, False


# ---------------------------------------------------------------------------
# the allocator: large buffers as their own mappings
def _tune_malloc():
    """Opt-in: EDGETRAIN_MMAP_THRESHOLD_KB=N (N > 0) fixes glibc's
    M_MMAP_THRESHOLD at N KiB, once, at import; unset or 0: glibc's dynamic
    threshold, untouched. 256 is the value measured below.

    Why: a training step allocates and frees its activations, saved copies and
    gradients (~1.5 GB for ResNet-18 224x224 b32) every step. With glibc's
    dynamic threshold every buffer under the largest one freed so far (up to
    32 MiB) comes from the brk heap after the first step, and the heap keeps its
    high-water mark resident and fragments: freed forward buffers are not
    reused by the larger backward ones, so the peak RSS is the forward's heap
    plus the backward's buffers (ResNet-18 224 b32 int8 training step, 2 cores:
    903 MiB dynamic, 658 MiB with 256). The cost: the pages of each new large
    buffer are faulted in again (+0.5 to 1 s of CPU per step there, measured
    under load).
    Not the default: under an address-space cap (RLIMIT_AS) a fixed threshold
    makes small buffers need new mappings too, and one such failure inside an op
    hangs instead of raising MemoryError (tests/test_errors.py's allocation
    failure test, ref backend conv2d). A threshold the user set for glibc
    (MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES) wins."""
    env = os.environ.get("EDGETRAIN_MMAP_THRESHOLD_KB", "").strip()
    if not env or "MALLOC_MMAP_THRESHOLD_" in os.environ \
            or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        kb = int(env)
    except ValueError:
        kb = -1
    if not 0 <= kb <= 32 << 10:
        raise ValueError(f"EDGETRAIN_MMAP_THRESHOLD_KB must be an integer in [0, 32768] "
                         f"(KiB; 0: glibc's dynamic threshold), got {env!r}")
    return kb > 0 and _C.set_mmap_threshold(kb << 10)


_tune_malloc()


# ---------------------------------------------------------------------------
# low-precision helpers (edgetrain.precision)
def _recording(ctx):
    """True when Function.apply will keep this node for backward."""
    return is_grad_enabled() and any(ctx.needs_input_grad)


def _weight_cacheable(ctx):
    """Whether an int8 weight may come from the prepacked-weight cache
    (csrc/quant/wcache.h): not when it is being trained (needs grad under grad
    mode), since the optimizer changes it every step and an entry would only
    cost ~1.5x its bytes and a compare; yes for frozen layers and inference."""
    return not (is_grad_enabled() and ctx.needs_input_grad[1])


def _sr_seed(pdx, pdw):
    """Seed of the stochastic rounding of dy in an int8 backward pass: one uint64
    drawn from edgetrain's generator per call (reproducible under manual_seed);
    no draw when no pass is int8."""
    if "int8" not in (pdx, pdw):
        return 0
    return int(default_generator().integers(0, 2 ** 64, dtype=np.uint64))


def _nonneg(x, pol):
    """True when x >= 0 everywhere (e.g. a post-ReLU activation) and some pass
    quantizes it to int8: it is then quantized as u8 [0, 127], twice the levels
    of s8 [-63, 63] (precision.py: 7-bit ranges). One pass over x (NumPy)."""
    if "int8" not in (pol[0], pol[2]) or x.size == 0:
        return False
    return bool(x.min() >= 0)


def _warn_fallbacks():
    """Surfaces the backend fallbacks (e.g. int8 conv on onednn -> ref), once each."""
    for msg in _C.fallback_warnings():
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


# ---------------------------------------------------------------------------
# convolution
class _Conv2d(Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups):
        ctx.backend = get_backend()
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = b is not None
        ctx.policy = pol = _current_policy()
        x, w = _c(x), _c(w)
        if pol == _FP32:
            # the fp32 path: unchanged (same jobs, same results)
            ctx.save_for_backward(x, w, _SavedToken(x.nbytes), None, None)
            return _C.conv2d_forward(x, w, None if b is None else _c(b), stride, padding,
                                     dilation, groups, backend=ctx.backend)
        fwd = pol[0]
        keep_q = fwd != "fp32" and _recording(ctx)
        ctx.x_nonneg = nonneg = _nonneg(x, pol)
        out = _C.conv2d_forward_lowp(x, w, None if b is None else _c(b), stride, padding,
                                     dilation, groups, precision=fwd, backend=ctx.backend,
                                     x_nonneg=nonneg, return_xq=keep_q,
                                     cache_weight=_weight_cacheable(ctx))
        if keep_q:
            # activations saved at forward precision, not x: x_q (int8: 1 byte per
            # element, with its scale xs; bf16 / fp16: 2 bytes, xs None)
            y, xq, xs = out
            ctx.save_for_backward(None, w, _SavedToken(xq.nbytes), xq, xs)
        else:
            y = out
            ctx.save_for_backward(x, w, _SavedToken(x.nbytes), None, None)
        _warn_fallbacks()
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, _tok, xq, xs = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        nx, nw, nb = ctx.needs_input_grad[:3]
        if ctx.policy == _FP32:
            dx, dw, db = _C.conv2d_backward(_c(g), x, w, stride, padding, dilation, groups,
                                            bool(nx), bool(nw), bool(nb and ctx.has_bias),
                                            backend=ctx.backend)
            return dx, dw, db, None, None, None, None
        _, pdx, pdw = ctx.policy
        dx, dw, db = _C.conv2d_backward_lowp(
            _c(g), x, w, stride, padding, dilation, groups, bool(nx), bool(nw),
            bool(nb and ctx.has_bias), precision_dx=pdx, precision_dw=pdw,
            seed=_sr_seed(pdx, pdw), offset=0, backend=ctx.backend,
            x_nonneg=ctx.x_nonneg, x_q=xq, x_scale=xs)
        _warn_fallbacks()
        return dx, dw, db, None, None, None, None


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    op = "conv2d"
    input, unb = _unbatched(input, op)
    _check_4d(input, op)
    _check_float(weight, op, "weight")
    if weight.ndim != 4:
        raise ShapeError(f"{op}: expected a 4D weight (out_channels, in_channels/groups, kH, "
                         f"kW), got {weight.ndim}D weight of shape {weight.shape}")
    if not isinstance(groups, numbers.Integral) or groups < 1:
        raise ShapeError(f"{op}: groups must be a positive integer, got {groups!r}")
    stride = _pair(stride, op, "stride", allow_zero=False)
    dilation = _pair(dilation, op, "dilation", allow_zero=False)
    n, c, h, w_ = input.shape
    oc, cg, kh, kw = weight.shape
    if any(s == 0 for s in weight.shape):
        raise ShapeError(f"{op}: weight of shape {weight.shape} has a zero-sized dimension")
    if c != cg * groups:
        raise ShapeError(f"{op}: input channels {c} != weight in_channels*groups "
                         f"{cg}*{groups}={cg * groups} (input {input.shape}, weight "
                         f"{weight.shape}, groups={groups})")
    if oc % groups:
        raise ShapeError(f"{op}: out_channels {oc} must be divisible by groups {groups} "
                         f"(weight {weight.shape})")
    if bias is not None:
        _check_float(bias, op, "bias")
        if bias.shape != (oc,):
            raise ShapeError(f"{op}: bias must have shape ({oc},), got {bias.shape} "
                             f"(weight {weight.shape})")
    ekh, ekw = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ShapeError(f"{op}: padding='same' is not supported for strided "
                                 f"convolutions (stride={stride})")
            tot = (ekh - 1, ekw - 1)
            lo = (tot[0] // 2, tot[1] // 2)
            if tot[0] % 2 or tot[1] % 2:
                # asymmetric: pad the extra row/column at the bottom/right
                # (as PyTorch does), then pad the rest symmetrically
                input = pad(input, (0, tot[1] - 2 * lo[1], 0, tot[0] - 2 * lo[0]))
                h, w_ = input.shape[2:]
            padding = lo
        else:
            raise ShapeError(f"{op}: invalid padding string {padding!r}, should be one of "
                             "'valid', 'same'")
    else:
        padding = _pair(padding, op, "padding")
    ph, pw = h + 2 * padding[0], w_ + 2 * padding[1]
    if ph < ekh or pw < ekw:
        raise ShapeError(f"{op}: calculated padded input size per channel: ({ph} x {pw}). "
                         f"Kernel size: ({ekh} x {ekw}). Kernel size can't be greater than "
                         f"actual input size (input {input.shape}, weight {weight.shape}, "
                         f"padding={padding}, dilation={dilation})")
    y = _Conv2d.apply(input, weight, bias, stride, padding, dilation, int(groups))
    return y.squeeze(0) if unb else y


# ---------------------------------------------------------------------------
# linear
class _Linear(Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.backend = get_backend()
        ctx.has_bias = b is not None
        ctx.policy = pol = _current_policy()
        x, w = _c(x), _c(w)
        if pol == _FP32:
            # the fp32 path: unchanged (same jobs, same results)
            ctx.save_for_backward(x, w, _SavedToken(x.nbytes), None, None)
            return _C.linear_forward(x, w, None if b is None else _c(b), backend=ctx.backend)
        fwd = pol[0]
        keep_q = fwd != "fp32" and _recording(ctx)   # saved at forward precision, as conv2d
        ctx.x_nonneg = nonneg = _nonneg(x, pol)
        out = _C.linear_forward_lowp(x, w, None if b is None else _c(b), precision=fwd,
                                     backend=ctx.backend, x_nonneg=nonneg, return_xq=keep_q,
                                     cache_weight=_weight_cacheable(ctx))
        if keep_q:
            y, xq, xs = out
            ctx.save_for_backward(None, w, _SavedToken(xq.nbytes), xq, xs)
        else:
            y = out
            ctx.save_for_backward(x, w, _SavedToken(x.nbytes), None, None)
        _warn_fallbacks()
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, _tok, xq, xs = ctx.saved_tensors
        nx, nw, nb = ctx.needs_input_grad[:3]
        if ctx.policy == _FP32:
            dx, dw, db = _C.linear_backward(_c(g), x, w, bool(nx), bool(nw),
                                            bool(nb and ctx.has_bias), backend=ctx.backend)
            return dx, dw, db
        _, pdx, pdw = ctx.policy
        dx, dw, db = _C.linear_backward_lowp(
            _c(g), x, w, bool(nx), bool(nw), bool(nb and ctx.has_bias), precision_dx=pdx,
            precision_dw=pdw, seed=_sr_seed(pdx, pdw), offset=0, backend=ctx.backend,
            x_nonneg=ctx.x_nonneg, x_q=xq, x_scale=xs)
        _warn_fallbacks()
        return dx, dw, db


def linear(input, weight, bias=None):
    op = "linear"
    _check_float(input, op)
    _check_float(weight, op, "weight")
    if weight.ndim != 2:
        raise ShapeError(f"{op}: expected a 2D weight (out_features, in_features), got "
                         f"shape {weight.shape}")
    if input.ndim == 0:
        raise ShapeError(f"{op}: input must have at least 1 dimension, got a scalar")
    out_f, in_f = weight.shape
    if input.shape[-1] != in_f:
        lead = int(np.prod(input.shape[:-1])) if input.ndim > 1 else 1
        raise ShapeError(f"{op}: mat1 and mat2 shapes cannot be multiplied "
                         f"({lead}x{input.shape[-1]} and {in_f}x{out_f}): input "
                         f"{input.shape}, weight {weight.shape}")
    if bias is not None:
        _check_float(bias, op, "bias")
        if bias.shape != (out_f,):
            raise ShapeError(f"{op}: bias must have shape ({out_f},), got {bias.shape}")
    lead = input.shape[:-1]
    # the row count spelled out: reshape(-1, 0) of an empty input is ambiguous
    # (a RuntimeError); with it _C names the empty dimension (ShapeError)
    x2 = input if input.ndim == 2 else input.reshape(int(np.prod(lead, dtype=np.int64)), in_f)
    y = _Linear.apply(x2, weight, bias)
    return y if input.ndim == 2 else y.reshape(lead + (out_f,))


# ---------------------------------------------------------------------------
# activations
class Relu(Function):
    """relu through the C kernel (float32). Saves the bit mask of y > 0 (1 bit per
    element, uint8 (ceil(numel / 8),)), not y (32 bits): the backward is
    dx = dy where y > 0, the same values as from y (+0 elsewhere, NaN -> 0). The
    mask is only made when the node is recorded."""
    @staticmethod
    def forward(ctx, a):
        a = _c(a)
        if not _recording(ctx):
            return _C.relu_forward(a)
        y, mask = _C.relu_forward_mask(a)
        ctx.save_for_backward(mask)
        return y

    @staticmethod
    def backward(ctx, g):
        # the engine's gradient buffer, when it is ours alone, becomes dx
        return _C.relu_backward_mask(_c(g), ctx.saved_tensors[0], inplace=ctx._grad_owned)


def relu(input, inplace=False):
    _check_float(input, "relu")
    y = Relu.apply(input)
    if inplace and not input.requires_grad and y.grad_fn is None:
        input._data[...] = y._data
        return input
    return y


def relu_(input):
    return relu(input, inplace=True)


class _Hardtanh(Function):
    """y = clip(x, lo, hi). PyTorch's gradient: dy where NOT (x <= lo or x >= hi),
    so 0 at exactly lo and hi (unlike clamp's, which passes them) and dy at NaN.
    Saves a bool mask (1 byte per element), not x."""
    @staticmethod
    def forward(ctx, x, lo, hi):
        lo, hi = np.float32(lo), np.float32(hi)
        if _recording(ctx):
            mask = np.less_equal(x, lo)
            np.logical_or(mask, np.greater_equal(x, hi), out=mask)
            np.logical_not(mask, out=mask)
            ctx.save_for_backward(mask)
        return np.clip(x, lo, hi)           # NaN stays NaN, as PyTorch's

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved_tensors[0], None, None


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    """clip(x, min_val, max_val); gradient 0 at and outside the bounds (PyTorch's)."""
    _check_float(input, "hardtanh")
    for name, v in (("min_val", min_val), ("max_val", max_val)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"hardtanh: {name} must be a real number, got {v!r}")
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val cannot be greater than max_val, got "
                         f"min_val={min_val}, max_val={max_val}")
    y = _Hardtanh.apply(input, float(min_val), float(max_val))
    if inplace and not input.requires_grad and y.grad_fn is None:
        input._data[...] = y._data
        return input
    return y


def relu6(input, inplace=False):
    """min(max(0, x), 6) (MobileNetV2's activation); PyTorch's gradient: dy on
    0 < x < 6, 0 at exactly 0 and 6 and outside."""
    _check_float(input, "relu6")
    return hardtanh(input, 0.0, 6.0, inplace=inplace)


# ---------------------------------------------------------------------------
# pooling
def _pool_out(size, k, s, p, d, ceil):
    eff = d * (k - 1) + 1
    num = size + 2 * p - eff
    if ceil:
        out = -(-num // s) + 1
        if (out - 1) * s >= size + p:     # last window must start inside input/left pad
            out -= 1
    else:
        out = num // s + 1
    return out


def _pool_args(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    input, unb = _unbatched(input, op)
    _check_4d(input, op)
    k = _pair(kernel_size, op, "kernel_size", allow_zero=False)
    s = k if stride is None or (not isinstance(stride, numbers.Integral)
                                and len(stride) == 0) else _pair(stride, op, "stride",
                                                                 allow_zero=False)
    p = _pair(padding, op, "padding")
    d = _pair(dilation, op, "dilation", allow_zero=False)
    for i in range(2):
        if p[i] > (k[i] // 2):
            raise ShapeError(f"{op}: pad should be at most half of effective kernel size, "
                             f"but got pad={p}, kernel_size={k} and dilation={d}")
    h, w = input.shape[2:]
    oh = _pool_out(h, k[0], s[0], p[0], d[0], ceil_mode)
    ow = _pool_out(w, k[1], s[1], p[1], d[1], ceil_mode)
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"{op}: given input size ({input.shape[1]}x{h}x{w}), calculated "
                         f"output size ({input.shape[1]}x{oh}x{ow}) is too small "
                         f"(kernel_size={k}, stride={s}, padding={p}, dilation={d})")
    return input, unb, k, s, p, d


class _MaxPool2d(Function):
    @staticmethod
    def forward(ctx, x, k, s, p, d, ceil_mode):
        ctx.x_shape = x.shape
        # no backward to feed (no_grad / input without grad): no int64 argmax
        # indices (8 bytes per output written, then dropped)
        rec = _recording(ctx)
        y, idx = _C.max_pool2d_forward(_c(x), k, s, p, d, bool(ceil_mode), return_indices=rec)
        if rec:
            # the argmax indices are flat within one (H, W) plane: < H*W, so int32
            # holds them whenever H*W does; saved at 4 bytes, not the kernel's 8
            # (ResNet-18 224x224 b32: 24.5 MiB instead of 49); the backward binding
            # takes them as they are (it widens a few planes at a time)
            if x.shape[-2] * x.shape[-1] <= np.iinfo(np.int32).max:
                idx = idx.astype(np.int32)
            ctx.save_for_backward(idx)
        return y

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        return _C.max_pool2d_backward(_c(g), idx, tuple(ctx.x_shape)), \
            None, None, None, None, None


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    op = "max_pool2d"
    x, unb, k, s, p, d = _pool_args(op, input, kernel_size, stride, padding, dilation,
                                    ceil_mode)
    y = _MaxPool2d.apply(x, k, s, p, d, bool(ceil_mode))
    if return_indices:
        # recompute indices without grad cost: the kernel returns them
        _, idx = _C.max_pool2d_forward(_c(x._data), k, s, p, d, bool(ceil_mode))
        idx_t = Tensor._wrap(idx)
        if unb:
            return y.squeeze(0), idx_t.squeeze(0)
        return y, idx_t
    return y.squeeze(0) if unb else y


class _AvgPool2d(Function):
    @staticmethod
    def forward(ctx, x, k, s, p, ceil_mode, count_include_pad):
        ctx.conf = (tuple(x.shape), k, s, p, bool(ceil_mode), bool(count_include_pad))
        return _C.avg_pool2d_forward(_c(x), k, s, p, bool(ceil_mode), bool(count_include_pad))

    @staticmethod
    def backward(ctx, g):
        return (_C.avg_pool2d_backward(_c(g), *ctx.conf),) + (None,) * 5


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    op = "avg_pool2d"
    if divisor_override is not None:
        raise UnsupportedError(f"{op}: divisor_override is not supported")
    x, unb, k, s, p, _ = _pool_args(op, input, kernel_size, stride, padding, 1, ceil_mode)
    y = _AvgPool2d.apply(x, k, s, p, bool(ceil_mode), bool(count_include_pad))
    return y.squeeze(0) if unb else y


class _AdaptiveAvgPool2d(Function):
    @staticmethod
    def forward(ctx, x, out_size):
        ctx.x_shape = tuple(x.shape)
        return _C.adaptive_avg_pool2d_forward(_c(x), out_size)

    @staticmethod
    def backward(ctx, g):
        return _C.adaptive_avg_pool2d_backward(_c(g), ctx.x_shape), None


def adaptive_avg_pool2d(input, output_size):
    op = "adaptive_avg_pool2d"
    x, unb = _unbatched(input, op)
    _check_4d(x, op)
    if isinstance(output_size, numbers.Integral):
        output_size = (int(output_size), int(output_size))
    output_size = tuple(output_size)
    if len(output_size) == 1:
        output_size = output_size * 2
    if len(output_size) != 2:
        raise ShapeError(f"{op}: output_size must be an int or a pair, got {output_size!r}")
    out = tuple(x.shape[2 + i] if v is None else int(v) for i, v in enumerate(output_size))
    if out[0] <= 0 or out[1] <= 0:
        raise ShapeError(f"{op}: output_size must be positive, got {output_size}")
    y = _AdaptiveAvgPool2d.apply(x, out)
    return y.squeeze(0) if unb else y


# ---------------------------------------------------------------------------
# batch norm
class _BatchNorm(Function):
    """fp32 policy: saves x (float32) and the statistics; the backward is
    PyTorch's formula from x. Any lower-precision policy (bf16 / fp16 / int8 /
    int8-mixed), when the node is recorded: saves xhat = (x - mean) * invstd
    rounded to bfloat16 (2 bytes per element instead of 4, written by the
    forward kernel in the same pass) and the backward reads it instead of
    recomputing it from x; the forward output and running statistics are the
    same bits either way, the gradients differ by xhat's rounding (relative
    error <= 2^-9 per element, well under the int8 / bf16 products' own)."""
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        x = _c(x)
        w = None if weight is None else _c(weight)
        ctx.training = bool(training)
        ctx.xhat = _current_policy() != _FP32 and _recording(ctx)
        out = _C.batch_norm_forward(
            x, w, None if bias is None else _c(bias), running_mean, running_var,
            bool(training), float(momentum), float(eps), save_xhat=ctx.xhat)
        if ctx.xhat:
            y, mean, invstd, xhat = out
            ctx.save_for_backward(xhat, w, None, invstd)
        else:
            y, mean, invstd = out
            ctx.save_for_backward(x, w, mean, invstd)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, mean, invstd = ctx.saved_tensors
        if ctx.xhat:   # x is the bf16 xhat; the engine's gradient buffer, ours alone, becomes dx
            dx, dw, db = _C.batch_norm_backward_xhat(_c(g), x, w, invstd, ctx.training,
                                                     inplace=ctx._grad_owned)
        else:
            dx, dw, db = _C.batch_norm_backward(_c(g), x, w, mean, invstd, ctx.training)
        return dx, dw, db, None, None, None, None, None


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    op = "batch_norm"
    _check_float(input, op)
    if input.ndim not in (2, 4):
        raise ShapeError(f"{op}: expected a 2D (N, C) or 4D (N, C, H, W) input, got "
                         f"{input.ndim}D input of shape {input.shape}")
    c = input.shape[1]
    rm = rv = None
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None:
            _check_float(t, op, name)
            if t.shape != (c,):
                raise ShapeError(f"{op}: {name} should contain {c} elements, got shape "
                                 f"{t.shape} (input {input.shape})")
    if running_mean is not None:
        rm = running_mean._data
        if not rm.flags.c_contiguous:
            raise ShapeError(f"{op}: running_mean must be contiguous")
    if running_var is not None:
        rv = running_var._data
    if not training and (rm is None or rv is None):
        raise ShapeError(f"{op}: running_mean and running_var are required when "
                         "training=False")
    if training:
        per_channel = input.numel() // max(c, 1)
        if per_channel <= 1:
            raise ShapeError(f"{op}: expected more than 1 value per channel when "
                             f"training, got input size {input.shape}")
    if momentum is None:
        momentum = 0.0
    return _BatchNorm.apply(input, weight, bias, rm, rv, bool(training), float(momentum),
                            float(eps))


# ---------------------------------------------------------------------------
# dropout
class _MaskMul(Function):
    @staticmethod
    def forward(ctx, x, mask):
        ctx.mask = mask
        return x * mask

    @staticmethod
    def backward(ctx, g):
        return g * ctx.mask, None


def dropout(input, p=0.5, training=True, inplace=False):
    if not isinstance(input, Tensor):
        raise TypeError(f"dropout: input must be an edgetrain Tensor, got {type(input).__name__}")
    if not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ShapeError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if input._data.dtype.kind != "f":
        raise DtypeError(f"dropout: expected a floating point input, got {input.dtype}")
    if p == 1.0:
        mask = np.zeros(input.shape, dtype=input._data.dtype)
    else:
        keep = default_generator().random(input.shape) >= p
        mask = keep.astype(input._data.dtype) * np.asarray(1.0 / (1.0 - p),
                                                           dtype=input._data.dtype)
    return _MaskMul.apply(input, mask)


# ---------------------------------------------------------------------------
# softmax / losses
class _LogSoftmax2D(Function):
    @staticmethod
    def forward(ctx, x):
        y = _C.log_softmax_forward(_c(x))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        return _C.log_softmax_backward(_c(g), ctx.saved_tensors[0])


def _softmax_dim(ndim):
    return 0 if ndim in (0, 1, 3) else 1


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    op = "log_softmax"
    if dtype is not None:
        input = input.to(dtype)
    _check_float(input, op)
    if dim is None:
        dim = _softmax_dim(input.ndim)
    if input.ndim == 0:
        return input - input
    d = dim % input.ndim if -input.ndim <= dim < input.ndim else None
    if d is None:
        raise IndexError(f"{op}: dimension out of range (expected to be in range of "
                         f"[{-input.ndim}, {input.ndim - 1}], but got {dim})")
    if input.numel() == 0:
        # nothing to normalise (and reshape(-1, 0) below is ambiguous): an
        # empty result of the same shape, as PyTorch
        return input * 0.0
    if input.ndim == 2 and d == 1:
        return _LogSoftmax2D.apply(input)
    # move `dim` last, flatten the rest to rows, run the (N, C) kernel, undo
    x = input if d == input.ndim - 1 else input.transpose(d, -1)
    shp = x.shape
    y = _LogSoftmax2D.apply(x.reshape(-1, shp[-1])).reshape(shp)
    return y if d == input.ndim - 1 else y.transpose(d, -1)


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    return log_softmax(input, dim, dtype=dtype).exp()


class _NLLLoss(Function):
    @staticmethod
    def forward(ctx, logp, target):
        logp, target = _c(logp), _c(target)
        ctx.save_for_backward(target)
        ctx.nc = logp.shape
        return np.asarray(_C.nll_loss_forward(logp, target), dtype=np.float32)

    @staticmethod
    def backward(ctx, g):
        (target,) = ctx.saved_tensors
        n, c = ctx.nc
        return _C.nll_loss_backward(target, n, c, float(g)), None


def _check_target(op, input, target):
    if not isinstance(target, Tensor):
        target = _t(target) if not isinstance(target, np.ndarray) else Tensor._wrap(target)
    if target._data.dtype.kind == "f":
        if not np.all(np.mod(target._data, 1) == 0):
            raise DtypeError(f"{op}: expected integer class indices as target, got "
                             f"{target.dtype} with non-integer values")
        target = Tensor._wrap(target._data.astype(np.int64))
    elif target._data.dtype.kind not in "iu":
        raise DtypeError(f"{op}: expected target of dtype int64, got {target.dtype}")
    elif target._data.dtype != np.int64:
        target = Tensor._wrap(target._data.astype(np.int64))
    return target


def _classes_last(input, target, op):
    """(N, C, d1, ...) / (N, d1, ...) -> (N*d1*..., C) / (N*d1*...)."""
    if input.ndim == 1:
        if target.ndim != 0:
            raise ShapeError(f"{op}: for an unbatched input of shape {input.shape} the "
                             f"target must be a scalar, got shape {target.shape}")
        return input.reshape(1, -1), target.reshape(1)
    if input.ndim == 2:
        if target.shape != (input.shape[0],):
            raise ShapeError(f"{op}: expected target of shape ({input.shape[0]},) for input "
                             f"{input.shape}, got {target.shape} (batch sizes must match)")
        return input, target
    if target.shape != (input.shape[0],) + input.shape[2:]:
        raise ShapeError(f"{op}: expected target of shape "
                         f"{(input.shape[0],) + input.shape[2:]} for input {input.shape}, "
                         f"got {target.shape}")
    c = input.shape[1]
    perm = (0,) + tuple(range(2, input.ndim)) + (1,)
    return input.permute(*perm).reshape(-1, c), target.reshape(-1)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    op = "nll_loss"
    if weight is not None:
        raise UnsupportedError(f"{op}: class weights are not supported")
    if size_average is not None or reduce is not None:
        reduction = "none" if reduce is False else ("sum" if size_average is False else "mean")
    if reduction not in ("mean", "sum", "none"):
        raise ShapeError(f"{op}: {reduction!r} is not a valid value for reduction "
                         "(use 'mean', 'sum' or 'none')")
    _check_float(input, op)
    target = _check_target(op, input, target)
    out_shape = (input.shape[0],) + input.shape[2:] if input.ndim >= 2 else ()
    logp, tgt = _classes_last(input, target, op)
    n, c = logp.shape
    t = tgt._data
    ignored = t == ignore_index
    bad = (~ignored) & ((t < 0) | (t >= c))
    if np.any(bad):
        v = int(t[bad][0])
        raise ShapeError(f"{op}: Target {v} is out of bounds: class indices must be in "
                         f"[0, {c}) for input of shape {input.shape}")
    if n == 0:
        raise ShapeError(f"{op}: empty batch (input {input.shape})")
    if reduction == "mean" and not np.any(ignored):
        return _NLLLoss.apply(logp, tgt)
    if reduction == "sum" and not np.any(ignored):
        return _NLLLoss.apply(logp, tgt) * float(n)
    # per-sample losses by a gather (cheap); ignored targets contribute 0
    safe = np.where(ignored, 0, t)
    picked = -logp[np.arange(n), safe]
    keep = Tensor._wrap((~ignored).astype(np.float32))
    losses = picked * keep
    if reduction == "none":
        return losses.reshape(out_shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / float((~ignored).sum())


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0):
    op = "cross_entropy"
    if label_smoothing != 0.0:
        raise UnsupportedError(f"{op}: label_smoothing is not supported (got "
                               f"{label_smoothing})")
    _check_float(input, op)
    if input.ndim == 0:
        raise ShapeError(f"{op}: input must have at least 1 dimension (classes), got a scalar")
    cdim = 0 if input.ndim == 1 else 1
    tgt = target if isinstance(target, Tensor) else None
    if tgt is not None and tgt._data.dtype.kind == "f" and tgt.shape == input.shape:
        # class probabilities (soft targets), as PyTorch
        if weight is not None:
            raise UnsupportedError(f"{op}: class weights are not supported")
        losses = -(tgt * log_softmax(input, cdim)).sum(cdim)
        if reduction == "none":
            return losses
        if reduction == "sum":
            return losses.sum()
        return losses.sum() / float(input.numel() // input.shape[cdim])
    return nll_loss(log_softmax(input, cdim), target, weight, size_average, ignore_index,
                    reduce, reduction)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    d = input - target
    sq = d * d
    if reduction == "none":
        return sq
    if reduction == "sum":
        return sq.sum()
    return sq.mean()


def one_hot(tensor, num_classes=-1):
    t = tensor._data.astype(np.int64)
    n = int(t.max()) + 1 if num_classes < 0 else num_classes
    return Tensor._wrap(np.eye(n, dtype=np.int64)[t])


# ---------------------------------------------------------------------------
# shapes
def flatten(input, start_dim=0, end_dim=-1):
    return input.flatten(start_dim, end_dim)


class _Pad(Function):
    @staticmethod
    def forward(ctx, x, pads, value):
        ctx.slices = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, x.shape))
        return np.pad(x, pads, constant_values=value)

    @staticmethod
    def backward(ctx, g):
        return np.ascontiguousarray(g[ctx.slices]), None, None


def pad(input, pad, mode="constant", value=0.0):
    """Constant padding; `pad` lists (left, right) pairs from the last dim."""
    if not isinstance(input, Tensor):
        raise TypeError(f"pad: input must be an edgetrain Tensor, got {type(input).__name__}")
    if mode != "constant":
        raise UnsupportedError(f"pad: mode {mode!r} is not supported (only 'constant')")
    try:
        pad = list(pad) if not isinstance(pad, (str, bytes)) else None
    except TypeError:
        pad = None
    if pad is None or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                              for v in pad):
        raise TypeError(f"pad: pad must be a sequence of ints (left, right, top, bottom, ...), "
                        f"got {pad!r}")
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise ShapeError(f"pad: padding length must be even and at most 2*ndim, got {pad}")
    pads = [(0, 0)] * input.ndim
    for i in range(len(pad) // 2):
        lo, hi = int(pad[2 * i]), int(pad[2 * i + 1])
        if lo < 0 or hi < 0:
            raise UnsupportedError(f"pad: negative padding is not supported, got {pad}")
        pads[input.ndim - 1 - i] = (lo, hi)
    return _Pad.apply(input, tuple(pads), value)
