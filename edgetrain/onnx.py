"""ONNX export of a trained model: `edgetrain.onnx.export` (torch.onnx.export's shape).

    import edgetrain as et
    model = et.models.resnet18(num_classes=10, small_input=True)
    ...                                               # train it
    et.onnx.export(model, et.randn(1, 3, 32, 32), "resnet18.onnx")

    import onnxruntime as ort                         # same logits within 1e-4 (fp32)
    sess = ort.InferenceSession("resnet18.onnx", providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": images})[0]     # images (B, 3, 32, 32) float32, any B

Supported modules: Sequential, Conv2d (zeros padding, ints / "same" / "valid",
stride, dilation, groups), Linear, BatchNorm1d / BatchNorm2d (with running
statistics), ReLU, ReLU6 (Clip 0..6), Softmax, LogSoftmax, MaxPool2d, AvgPool2d
(both incl. ceil_mode), AdaptiveAvgPool2d (output sizes that divide the input),
Flatten, Unflatten, Dropout, Identity, and the model classes LeNet, ResNet,
BasicBlock, Bottleneck, MobileNetV2, InvertedResidual (Conv2dNormActivation is
a Sequential). Any other module type raises UnsupportedError (a
NotImplementedError) naming its path and type; `register_converter` adds one.

How it works, and why:
- Modules, not ops. A converter per module type (a registry keyed by class)
  emits the ONNX nodes for it; containers and model classes (Sequential,
  ResNet, BasicBlock, ...) have converters that mirror their forward() and
  convert their children. edgetrain records no op-level graph for inference,
  and a custom module's forward() is arbitrary Python, so an unknown type is an
  error rather than a guess. A subclass that redefines forward() does not
  inherit its base's converter, for the same reason.
- Converters run on values. Each converter also runs its module on the traced
  example tensor, so it knows every intermediate shape (Flatten, pooling) and
  the exporter compares the traced result with model(args): a converter that
  does not reproduce the model's forward() is caught at export, not in
  deployment. The example's shape is checked by that forward: one that does not
  fit raises ShapeError (a ValueError) naming it.
- Inference semantics: the model runs in eval mode (BatchNorm uses its running
  statistics and becomes ONNX BatchNormalization; Dropout is the identity);
  every module's training flag is restored afterwards. BatchNorm is not folded
  into the convolution: the graph mirrors the model and keeps its weights
  exactly; ONNX Runtime fuses Conv + BatchNormalization itself.
- Weights are the fp32 master weights whatever the model's precision policy
  (et.set_precision / module.set_precision change only how products run); the
  example forwards run at fp32 and the policies are restored afterwards.
  Quantizing for a target is the inference runtime's job.
- The batch axis is dynamic by default (dim_param "batch"); the other axes are
  the example's. Reshapes copy dim 0 (0 in the Reshape shape) so any batch works.
- Pooling with ceil_mode is written as ceil_mode=0 plus explicit end padding:
  onnx's shape inference (1.23) does not apply PyTorch's rule that drops a last
  window starting in the right padding (onnxruntime does), so a native
  ceil_mode=1 node can fail onnx.checker; explicit padding leaves nothing to
  disagree about. AvgPool keeps PyTorch's divisor (an explicit Pad when needed).
- The model's IR version is the lowest that carries `opset_version` (opset 13+:
  Softmax's per-axis semantics), so older runtimes load the file. The model is
  checked with onnx.checker (full check, with shape inference) before it is
  written, atomically: a failure never leaves a partial .onnx file.

Limits: one input and one output tensor; the protobuf 2 GiB limit (no external
data); spatial axes are static. `onnx` is needed only to export (imported on
the first call), onnxruntime only to run the result.
"""
from __future__ import annotations

import os
from collections import namedtuple

import numpy as np

from . import nn
from .autograd import no_grad
from .checkpoint import atomic_write
from .errors import ShapeError, UnsupportedError
from .models.lenet import LeNet
from .models.mobilenet import InvertedResidual, MobileNetV2
from .models.resnet import BasicBlock, Bottleneck, ResNet
from .precision import precision as _precision
from .tensor import Tensor, tensor as _tensor

__all__ = ["export", "register_converter", "Value"]

MIN_OPSET = 13

# An ONNX value: its name in the graph and the edgetrain Tensor it holds for
# the example input (shapes and the final consistency check come from it).
Value = namedtuple("Value", ["name", "tensor"])

_CONVERTERS = {}


def register_converter(module_type):
    """Decorator: `fn(ctx, module, x, path) -> Value` converts modules of
    `module_type` (and of subclasses that keep its forward).

    `x` is the input Value, `path` the module's dotted name in the model ("" for
    the model itself). A converter computes its module's output on x.tensor and
    emits nodes with the ctx helpers:
        ctx.op(op_type, inputs, out_tensor, path, **attrs) -> Value
        ctx.param(tensor, name) -> initializer name (fp32 copy of a weight)
        ctx.const(array, path, hint) -> initializer name (a constant)
        ctx.child(module, "conv1", x, path) -> Value (converts a child module)
    """
    def deco(fn):
        _CONVERTERS[module_type] = fn
        return fn
    return deco


def _find_converter(module):
    cls = type(module)
    for base in cls.__mro__:
        fn = _CONVERTERS.get(base)
        if fn is not None:
            # a subclass that redefines forward() computes something else
            return fn if getattr(cls, "forward", None) is getattr(base, "forward", None) else None
    return None


def _join(path, name):
    return f"{path}.{name}" if path else name


def _scope(path):
    """Node / constant name prefix, torch.onnx's style: "layer1.0.conv1" -> "/layer1/0/conv1/"."""
    return "/" + (path.replace(".", "/") + "/" if path else "")


def _where(path, module):
    return (f"module '{path}' ({type(module).__name__})" if path
            else f"the model itself ({type(module).__name__})")


def _require_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise ImportError("edgetrain.onnx.export needs the 'onnx' package "
                          "(pip install onnx)") from e
    return onnx, helper, numpy_helper


class _Context:
    """Collects nodes and initializers while converters walk the model."""

    def __init__(self, helper, numpy_helper, dynamic_batch):
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.dynamic_batch = dynamic_batch
        self.nodes = []
        self.initializers = []
        self._names = set()
        self._params = {}          # id(parameter) -> initializer name (shared weights once)

    def unique(self, name):
        if name not in self._names:
            self._names.add(name)
            return name
        i = 1
        while f"{name}_{i}" in self._names:
            i += 1
        self._names.add(f"{name}_{i}")
        return f"{name}_{i}"

    def _add_init(self, array, name):
        name = self.unique(name)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def param(self, t, name):
        """A weight or buffer as an fp32 initializer named `name` (its state_dict key)."""
        key = id(t)
        if key not in self._params:
            self._params[key] = self._add_init(np.asarray(t._data, dtype=np.float32), name)
        return self._params[key]

    def const(self, array, path, hint):
        return self._add_init(np.asarray(array), _scope(path) + hint)

    def op(self, op_type, inputs, out_tensor, path, **attrs):
        name = self.unique(_scope(path) + op_type)
        out = self.unique(name + "_output_0")
        ins = [i.name if isinstance(i, Value) else i for i in inputs]
        self.nodes.append(self.helper.make_node(op_type, ins, [out], name=name, **attrs))
        return Value(out, out_tensor)

    def convert(self, module, x, path):
        fn = _find_converter(module)
        if fn is None:
            raise UnsupportedError(
                f"edgetrain.onnx.export: no ONNX converter for {_where(path, module)}; "
                f"supported: {', '.join(sorted(c.__name__ for c in _CONVERTERS))} "
                "(add one with edgetrain.onnx.register_converter)")
        return fn(self, module, x, path)

    def child(self, module, name, x, path):
        return self.convert(module._modules[name], x, _join(path, name))

    def reshape(self, x, out_tensor, path, batch_merged=False):
        """Reshape x to out_tensor's shape; dim 0 is copied from the input (or
        -1 when it merges the batch) so the batch stays dynamic."""
        target = list(out_tensor.shape)
        if self.dynamic_batch and target:
            target[0] = -1 if batch_merged else 0
        shape = self.const(np.asarray(target, dtype=np.int64), path, "shape")
        return self.op("Reshape", [x, shape], out_tensor, path)

    def flatten(self, x, start_dim, end_dim, path):
        """Tensor.flatten(start_dim, end_dim) (Flatten modules and ResNet's x.flatten(1))."""
        y = x.tensor.flatten(start_dim, end_dim)
        r = x.tensor.ndim
        if r == 0:
            return self.reshape(x, y, path)
        s, e = start_dim % r, end_dim % r
        if s == 1 and e == r - 1:           # the classifier case: (N, ...) -> (N, prod)
            return self.op("Flatten", [x], y, path, axis=1)
        return self.reshape(x, y, path, batch_merged=(s == 0 and e > 0))


# ---------------------------------------------------------------------------
# containers and identities
@register_converter(nn.Sequential)
def _sequential(ctx, m, x, path):
    for name in m._modules:
        x = ctx.child(m, name, x, path)
    return x


@register_converter(nn.Identity)
@register_converter(nn.Dropout)
def _identity(ctx, m, x, path):
    return Value(x.name, m(x.tensor))       # Dropout in eval mode returns its input


# ---------------------------------------------------------------------------
# layers
def _pair(v):
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    return v * 2 if len(v) == 1 else v


@register_converter(nn.Conv2d)
def _conv2d(ctx, m, x, path):
    y = m(x.tensor)
    kh, kw = m.kernel_size
    dh, dw = m.dilation
    if m.padding == "valid":
        pads = [0, 0, 0, 0]
    elif m.padding == "same":
        # total (dilated kernel - 1); the odd extra row/column goes bottom/right
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = [th // 2, tw // 2, th - th // 2, tw - tw // 2]
    else:
        ph, pw = m.padding
        pads = [ph, pw, ph, pw]
    # x (N, C, H, W), weight (OC, C/groups, KH, KW), bias (OC,): ONNX Conv's layouts
    ins = [x, ctx.param(m.weight, _join(path, "weight"))]
    if m.bias is not None:
        ins.append(ctx.param(m.bias, _join(path, "bias")))
    return ctx.op("Conv", ins, y, path, kernel_shape=[kh, kw], strides=list(m.stride),
                  pads=pads, dilations=[dh, dw], group=int(m.groups))


@register_converter(nn.Linear)
def _linear(ctx, m, x, path):
    y = m(x.tensor)
    if x.tensor.ndim == 2:                  # Gemm: (N, in) @ W(out, in).T + b(out,)
        ins = [x, ctx.param(m.weight, _join(path, "weight"))]
        if m.bias is not None:
            ins.append(ctx.param(m.bias, _join(path, "bias")))
        return ctx.op("Gemm", ins, y, path, transB=1)
    # (..., in): MatMul broadcasts the leading axes; W.T (in, out) is a constant
    wt = ctx.const(np.asarray(m.weight._data, dtype=np.float32).T, path, "weight_t")
    if m.bias is None:
        return ctx.op("MatMul", [x, wt], y, path)
    xw = ctx.op("MatMul", [x, wt], None, path)
    return ctx.op("Add", [xw, ctx.param(m.bias, _join(path, "bias"))], y, path)


@register_converter(nn.BatchNorm1d)
@register_converter(nn.BatchNorm2d)
def _batchnorm(ctx, m, x, path):
    if m.running_mean is None or m.running_var is None:
        raise UnsupportedError(
            f"edgetrain.onnx.export: {_where(path, m)} has track_running_stats=False: it "
            "normalises with each batch's own statistics even in eval mode, which ONNX "
            "BatchNormalization (inference) cannot express")
    y = m(x.tensor)
    # x (N, C) or (N, C, H, W); per-channel (C,) scale, bias, mean, var:
    # y = (x - mean) / sqrt(var + eps) * scale + bias, as edgetrain's eval mode
    c = m.num_features
    scale = (ctx.param(m.weight, _join(path, "weight")) if m.weight is not None
             else ctx.const(np.ones(c, np.float32), path, "scale"))
    bias = (ctx.param(m.bias, _join(path, "bias")) if m.bias is not None
            else ctx.const(np.zeros(c, np.float32), path, "bias"))
    mean = ctx.param(m.running_mean, _join(path, "running_mean"))
    var = ctx.param(m.running_var, _join(path, "running_var"))
    return ctx.op("BatchNormalization", [x, scale, bias, mean, var], y, path,
                  epsilon=float(m.eps))


@register_converter(nn.ReLU)
def _relu(ctx, m, x, path):
    return ctx.op("Relu", [x], m(x.tensor), path)


@register_converter(nn.ReLU6)
def _relu6(ctx, m, x, path):
    # Clip (opset 11+) takes min / max as scalar inputs, not attributes
    lo = ctx.const(np.asarray(0.0, np.float32), path, "min")
    hi = ctx.const(np.asarray(6.0, np.float32), path, "max")
    return ctx.op("Clip", [x, lo, hi], m(x.tensor), path)


@register_converter(nn.Softmax)
@register_converter(nn.LogSoftmax)
def _softmax(ctx, m, x, path):
    y = m(x.tensor)
    r = x.tensor.ndim
    dim = m.dim if m.dim is not None else nn.functional._softmax_dim(r)
    op = "Softmax" if isinstance(m, nn.Softmax) else "LogSoftmax"
    return ctx.op(op, [x], y, path, axis=int(dim) % max(r, 1))


@register_converter(nn.Flatten)
def _flatten(ctx, m, x, path):
    return ctx.flatten(x, m.start_dim, m.end_dim, path)


@register_converter(nn.Unflatten)
def _unflatten(ctx, m, x, path):
    y = m(x.tensor)
    if ctx.dynamic_batch and m.dim % max(x.tensor.ndim, 1) == 0:
        raise UnsupportedError(f"edgetrain.onnx.export: {_where(path, m)} unflattens the "
                               "batch axis (dim 0), which cannot stay dynamic; pass "
                               "dynamic_batch=False")
    return ctx.reshape(x, y, path)


# ---------------------------------------------------------------------------
# pooling
def _end_pads(in_hw, out_hw, k, s, p, d=(1, 1)):
    """Extra bottom/right padding that makes floor-mode ONNX pooling produce
    PyTorch's (ceil-mode) output size: the last window must fit in the padded
    input. 0 when ceil_mode is off or changes nothing."""
    return [max(0, (o - 1) * st + dd * (kk - 1) + 1 - (i + 2 * pp))
            for i, o, kk, st, pp, dd in zip(in_hw, out_hw, k, s, p, d)]


def _pool_geometry(m):
    k = _pair(m.kernel_size)
    stride = m.stride
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) \
        else _pair(stride)
    return k, s, _pair(m.padding)


@register_converter(nn.MaxPool2d)
def _maxpool(ctx, m, x, path):
    if m.return_indices:
        raise UnsupportedError(f"edgetrain.onnx.export: {_where(path, m)} has "
                               "return_indices=True (only one output tensor is exported)")
    y = m(x.tensor)
    k, s, p = _pool_geometry(m)
    d = _pair(m.dilation)
    e = _end_pads(x.tensor.shape[2:], y.shape[2:], k, s, p, d)
    # padding is ignored by max (as -inf in PyTorch), so extra end padding is exact
    return ctx.op("MaxPool", [x], y, path, kernel_shape=list(k), strides=list(s),
                  pads=[p[0], p[1], p[0] + e[0], p[1] + e[1]], dilations=list(d))


@register_converter(nn.AvgPool2d)
def _avgpool(ctx, m, x, path):
    y = m(x.tensor)                 # divisor_override raises UnsupportedError here
    k, s, p = _pool_geometry(m)
    e = _end_pads(x.tensor.shape[2:], y.shape[2:], k, s, p)
    cip = bool(m.count_include_pad)
    if not any(e):
        return ctx.op("AveragePool", [x], y, path, kernel_shape=list(k), strides=list(s),
                      pads=[p[0], p[1], p[0], p[1]], count_include_pad=int(cip))
    # ceil_mode window past the padded input: PyTorch divides by the window
    # clipped to the padded input, counting the zero padding when
    # count_include_pad; so pad with real zeros and do not count the extra.
    if cip and any(p):
        pads = ctx.const(np.asarray([0, 0, p[0], p[1], 0, 0, p[0], p[1]], np.int64), path, "pads")
        x = ctx.op("Pad", [x, pads], None, path)
        p = (0, 0)
    return ctx.op("AveragePool", [x], y, path, kernel_shape=list(k), strides=list(s),
                  pads=[p[0], p[1], p[0] + e[0], p[1] + e[1]], count_include_pad=0)


@register_converter(nn.AdaptiveAvgPool2d)
def _adaptive_avgpool(ctx, m, x, path):
    y = m(x.tensor)
    (h, w), (oh, ow) = x.tensor.shape[2:], y.shape[2:]
    if (oh, ow) == (1, 1):
        return ctx.op("GlobalAveragePool", [x], y, path)
    if h % oh or w % ow:
        raise UnsupportedError(
            f"edgetrain.onnx.export: {_where(path, m)}: output {oh}x{ow} from {h}x{w} needs "
            "windows of different sizes, which ONNX pooling cannot express")
    # equal windows: adaptive pooling is a plain average pool
    kk = [h // oh, w // ow]
    return ctx.op("AveragePool", [x], y, path, kernel_shape=kk, strides=kk)


# ---------------------------------------------------------------------------
# models: each converter mirrors the class's forward()
@register_converter(LeNet)
def _lenet(ctx, m, x, path):
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        x = ctx.child(m, conv, x, path)
        x = ctx.child(m, bn, x, path)
        x = ctx.child(m, "relu", x, path)
        x = ctx.child(m, "pool", x, path)
    x = ctx.child(m, "flatten", x, path)
    x = ctx.child(m, "relu", ctx.child(m, "fc1", x, path), path)
    x = ctx.child(m, "relu", ctx.child(m, "fc2", x, path), path)
    return ctx.child(m, "fc3", x, path)


def _residual(ctx, m, x, out, path):
    """relu(out + shortcut(x)) (the end of BasicBlock / Bottleneck.forward)."""
    identity = x if m.downsample is None else ctx.child(m, "downsample", x, path)
    s = ctx.op("Add", [out, identity], out.tensor + identity.tensor, path)
    return ctx.child(m, "relu", s, path)


@register_converter(BasicBlock)
def _basic_block(ctx, m, x, path):
    out = ctx.child(m, "relu", ctx.child(m, "bn1", ctx.child(m, "conv1", x, path), path), path)
    out = ctx.child(m, "bn2", ctx.child(m, "conv2", out, path), path)
    return _residual(ctx, m, x, out, path)


@register_converter(Bottleneck)
def _bottleneck(ctx, m, x, path):
    out = ctx.child(m, "relu", ctx.child(m, "bn1", ctx.child(m, "conv1", x, path), path), path)
    out = ctx.child(m, "relu", ctx.child(m, "bn2", ctx.child(m, "conv2", out, path), path), path)
    out = ctx.child(m, "bn3", ctx.child(m, "conv3", out, path), path)
    return _residual(ctx, m, x, out, path)


@register_converter(ResNet)
def _resnet(ctx, m, x, path):
    x = ctx.child(m, "relu", ctx.child(m, "bn1", ctx.child(m, "conv1", x, path), path), path)
    for name in ("maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
        x = ctx.child(m, name, x, path)
    x = ctx.flatten(x, 1, -1, path)
    return ctx.child(m, "fc", x, path)


@register_converter(InvertedResidual)
def _inverted_residual(ctx, m, x, path):
    out = ctx.child(m, "conv", x, path)
    if not m.use_res_connect:
        return out
    # x + conv(x), in forward()'s operand order
    return ctx.op("Add", [x, out], x.tensor + out.tensor, path)


@register_converter(MobileNetV2)
def _mobilenet_v2(ctx, m, x, path):
    x = ctx.child(m, "features", x, path)
    # forward() calls F.adaptive_avg_pool2d(x, (1, 1)): (N, C, H, W) -> (N, C, 1, 1)
    x = ctx.op("GlobalAveragePool", [x], nn.functional.adaptive_avg_pool2d(x.tensor, (1, 1)),
               path)
    x = ctx.flatten(x, 1, -1, path)
    return ctx.child(m, "classifier", x, path)


# ---------------------------------------------------------------------------
class _Fp32Inference:
    """Eval mode, no grad, fp32 products (module policies lifted, context fp32);
    every module's training flag and precision policy restored on exit."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        mods = list(self.model.modules())
        self.training = [(m, m.training) for m in mods]
        # module.set_precision stores the policy as `_precision` (precision.py);
        # a module's own policy wins over any context, so lift it for the export
        self.policies = [(m, m.__dict__.pop("_precision")) for m in mods
                         if "_precision" in m.__dict__]
        self.model.eval()
        self.ctxs = [no_grad(), _precision("fp32")]
        for c in self.ctxs:
            c.__enter__()
        return self

    def __exit__(self, *exc):
        for c in reversed(self.ctxs):
            c.__exit__(*exc)
        for m, p in self.policies:
            object.__setattr__(m, "_precision", p)
        for m, flag in self.training:
            object.__setattr__(m, "training", flag)
        return False


def _names(value, what):
    names = [value] if isinstance(value, str) else list(value)
    if len(names) != 1 or not isinstance(names[0], str) or not names[0]:
        raise ValueError(f"edgetrain.onnx.export: {what} must be one non-empty name "
                         f"(one {what[:-6]} tensor is exported), got {value!r}")
    return names[0]


def _example(args):
    if isinstance(args, tuple) and len(args) == 1:     # torch.onnx.export's args=(x,)
        args = args[0]
    if isinstance(args, Tensor):
        arr = args._data
    elif isinstance(args, np.ndarray):
        arr = args
    else:
        raise TypeError("edgetrain.onnx.export: args must be an example input "
                        f"(edgetrain.Tensor or numpy.ndarray), got {type(args).__name__}")
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"edgetrain.onnx.export: the example input must be numeric, got "
                        f"dtype {arr.dtype}")
    if arr.ndim < 2 or arr.shape[0] < 1:
        raise ShapeError(f"edgetrain.onnx.export: the example input must be batched, "
                         f"(N, C, H, W) or (N, F) with N >= 1; got shape {tuple(arr.shape)}")
    return _tensor(arr, dtype="float32")


def export(model, args, f, *, input_names=("input",), output_names=("logits",),
           dynamic_batch=True, opset_version=17, metadata=None):
    """Write `model` (inference mode, fp32 weights) to the ONNX file `f`.

    model: an edgetrain.nn.Module built from supported modules (see the module
        docstring); its training flags and precision policies are left as they were.
    args: an example input, edgetrain.Tensor or numpy array (float32), shape
        (N, C, H, W) or (N, F) (a 1-tuple (x,) is accepted, as torch.onnx.export's);
        the model runs on it twice (a small N is enough). A shape the model does not
        accept raises ShapeError (a ValueError) naming it.
    f: a path (str / os.PathLike), written atomically, or a writable binary file.
    input_names, output_names: one name each (the graph's input and output).
    dynamic_batch: axis 0 of the input and output is the symbolic "batch";
        False keeps the example's N.
    opset_version: the ONNX opset (13 up to the installed onnx's newest).
    metadata: {str: str} stored as the model's metadata_props (e.g. the input
        normalisation, which the graph does not contain).

    Returns the onnx.ModelProto that was written. Needs the `onnx` package
    (ImportError otherwise); UnsupportedError (NotImplementedError) for a module
    with no converter.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"edgetrain.onnx.export: model must be an edgetrain.nn.Module, "
                        f"got {type(model).__name__}")
    if not hasattr(f, "write"):
        try:
            f = os.fspath(f)
        except TypeError:
            raise TypeError("edgetrain.onnx.export: f must be a path (str / os.PathLike) or "
                            f"a writable binary file, got {type(f).__name__}") from None
    in_name = _names(input_names, "input_names")
    out_name = _names(output_names, "output_names")
    if in_name == out_name:
        raise ValueError(f"edgetrain.onnx.export: input and output names must differ, "
                         f"both are {in_name!r}")
    x = _example(args)
    onnx, helper, numpy_helper = _require_onnx()
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset_version, bool) or not isinstance(opset_version, int) or \
            not MIN_OPSET <= opset_version <= newest:
        raise ValueError(f"edgetrain.onnx.export: opset_version must be an int in "
                         f"[{MIN_OPSET}, {newest}], got {opset_version!r}")

    ctx = _Context(helper, numpy_helper, bool(dynamic_batch))
    with _Fp32Inference(model):
        try:
            ref = model(x)
        except (ValueError, IndexError) as e:
            raise ShapeError(f"edgetrain.onnx.export: the example input of shape "
                             f"{x.shape} does not fit {type(model).__name__}: {e}") from e
        if not isinstance(ref, Tensor):
            raise UnsupportedError(f"edgetrain.onnx.export: the model must return one "
                                   f"Tensor, got {type(ref).__name__}")
        if dynamic_batch and (ref.ndim == 0 or ref.shape[0] != x.shape[0]):
            raise ShapeError(f"edgetrain.onnx.export: output shape {ref.shape} has no batch "
                             f"axis 0 matching the input's {x.shape}; use an (N, ...) "
                             "input or dynamic_batch=False")
        y = ctx.convert(model, Value(in_name, x), "")
    # The converters ran the same layers in the same order: a difference means
    # one of them does not mirror its module's forward().
    if y.tensor.shape != ref.shape or not np.allclose(y.tensor._data, ref._data,
                                                      rtol=1e-5, atol=1e-6):
        diff = (np.abs(y.tensor._data - ref._data).max()
                if y.tensor.shape == ref.shape else f"shape {y.tensor.shape} vs {ref.shape}")
        raise RuntimeError(f"edgetrain.onnx.export: the converted graph does not reproduce "
                           f"{type(model).__name__}.forward on the example (max |diff| "
                           f"{diff}): a converter does not match its module's forward()")

    # Name the graph output: rename the node that produces it (an Identity when
    # the model returns its input unchanged).
    producer = next((n for n in reversed(ctx.nodes) if y.name in n.output), None)
    if producer is None:
        ctx.nodes.append(helper.make_node("Identity", [y.name], [out_name],
                                          name=ctx.unique("/Identity")))
    else:
        for n in ctx.nodes:
            for seq in (n.input, n.output):
                for i, v in enumerate(seq):
                    if v == y.name:
                        seq[i] = out_name

    in_shape, out_shape = list(x.shape), list(ref.shape)
    if dynamic_batch:                   # checked above: both have the batch on axis 0
        in_shape[0] = out_shape[0] = "batch"
    graph = helper.make_graph(
        ctx.nodes, type(model).__name__,
        [helper.make_tensor_value_info(in_name, onnx.TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, out_shape)],
        initializer=ctx.initializers)
    opsets = [helper.make_opsetid("", opset_version)]
    from . import __version__
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="edgetrain",
                              producer_version=__version__)
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    if metadata:
        bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise TypeError(f"edgetrain.onnx.export: metadata must map str to str, got "
                            f"{bad[0]!r}: {metadata[bad[0]]!r}")
        helper.set_model_props(proto, dict(metadata))
    onnx.checker.check_model(proto, full_check=True)

    data = proto.SerializeToString()
    if hasattr(f, "write"):
        f.write(data)
    else:
        atomic_write(f, lambda fh: fh.write(data))
    return proto
