import math

from ..tensor import empty as _empty, ones as _ones, zeros as _zeros
from ..errors import ShapeError, UnsupportedError
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class Conv2d(Module):
    """2-D convolution, PyTorch's layer: weight (out, in/groups, kh, kw),
    bias (out,), kaiming_uniform(a=sqrt(5)) init."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None):
        super().__init__()
        if groups <= 0:
            raise ShapeError("groups must be a positive integer")
        if in_channels <= 0 or out_channels <= 0:
            raise ShapeError(f"Conv2d: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must be positive")
        if in_channels % groups:
            raise ShapeError(f"Conv2d: in_channels ({in_channels}) must be divisible by "
                             f"groups ({groups})")
        if out_channels % groups:
            raise ShapeError(f"Conv2d: out_channels ({out_channels}) must be divisible by "
                             f"groups ({groups})")
        if padding_mode != "zeros":
            if padding_mode in ("reflect", "replicate", "circular"):
                raise UnsupportedError(f"Conv2d: padding_mode={padding_mode!r} is not "
                                       "supported (only 'zeros')")
            raise ShapeError(f"padding_mode must be one of ['zeros', 'reflect', "
                             f"'replicate', 'circular'], but got padding_mode='{padding_mode}'")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        if any(k <= 0 for k in self.kernel_size):
            raise ShapeError(f"Conv2d: kernel_size must be positive, got {kernel_size}")
        self.stride = _pair(stride)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ShapeError(f"Invalid padding string '{padding}', should be one of "
                                 "['valid', 'same']")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ShapeError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.transposed = False
        self.output_padding = (0, 0)
        self.groups = groups
        self.padding_mode = padding_mode
        kh, kw = self.kernel_size
        self.weight = Parameter(_empty(out_channels, in_channels // groups, kh, kw))
        if bias:
            self.bias = Parameter(_empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._fans(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
             f", stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else \
                f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
