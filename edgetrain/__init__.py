"""edgetrain: train DNNs on CPU + an inference accelerator, PyTorch-style.

Autograd, optimizers and light ops run on the CPU; every heavy conv/matmul
product (forward, backward-data, backward-weight) is offloaded through the C
core's queue to a forward-only backend (ref / blas / onednn).
"""
import builtins as _builtins

from . import _C
from .errors import (AnomalyError, BackendError, CheckpointError, DtypeError, EdgetrainError,
                     GradcheckError, ShapeError, StateDictError, UnsupportedError)
from .random import manual_seed, seed, initial_seed, default_generator
from .backend import (backends, set_backend, get_backend, backend, cache_stats,
                      set_cache_capacity, clear_cache)
from .precision import (set_precision, get_precision, precision, set_int8_reduce_range,  # noqa: F401
                        int8_reduce_range,
                        saved_activation_bytes)
from .autograd import Function, no_grad, enable_grad, set_grad_enabled, is_grad_enabled
from .anomaly import set_anomaly_detection, is_anomaly_enabled  # et.autograd.detect_anomaly too
from .tensor import (Tensor, tensor, as_tensor, from_numpy, zeros, ones, empty, full,
                     zeros_like, ones_like, full_like, randn, rand, randint, randperm,
                     arange, linspace, eye, cat, concat, stack, matmul, maximum, minimum,
                     numel, is_tensor, allclose, equal, where)
from . import autograd, random, tensor as _tensor_module  # noqa: F401
from . import nn, optim, models, data
from . import amp  # noqa: F401  (et.amp.GradScaler)
from . import checkpoint  # noqa: F401
from . import profiler  # noqa: F401  (et.profiler.profile, record_function)
from . import onnx  # noqa: F401  (et.onnx.export; imports the onnx package only when called)
from .checkpoint import save, load

float32 = "float32"
float64 = "float64"
float16 = "float16"
int8 = "int8"
uint8 = "uint8"
int32 = "int32"
int64 = "int64"
bool = "bool"                       # noqa: A001 - torch.bool's spelling
float = "float32"                   # noqa: A001
long = "int64"


def _method(name):
    def f(input, *args, **kwargs):
        if not isinstance(input, Tensor):
            input = tensor(input)
        return getattr(input, name)(*args, **kwargs)
    f.__name__ = name
    f.__qualname__ = name
    f.__doc__ = f"edgetrain.{name}(input, ...) == input.{name}(...)"
    return f


exp = _method("exp")
log = _method("log")
sqrt = _method("sqrt")
abs = _method("abs")                # noqa: A001
tanh = _method("tanh")
sigmoid = _method("sigmoid")
relu = _method("relu")
sum = _method("sum")                # noqa: A001
mean = _method("mean")
max = _method("max")                # noqa: A001
min = _method("min")                # noqa: A001
argmax = _method("argmax")
argmin = _method("argmin")
reshape = _method("reshape")
flatten = _method("flatten")
squeeze = _method("squeeze")
unsqueeze = _method("unsqueeze")
transpose = _method("transpose")
permute = _method("permute")
clamp = _method("clamp")
clip = clamp
var = _method("var")
std = _method("std")

__version__ = "0.1.0"

del _builtins
