from ..tensor import empty as _empty, ones as _ones, zeros as _zeros
from ..errors import ShapeError
from . import functional as F
from .module import Module
from .parameter import Parameter


class _BatchNorm(Module):
    _expected_ndim = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True):
        super().__init__()
        if num_features <= 0:
            raise ShapeError(f"{type(self).__name__}: num_features must be positive, got "
                             f"{num_features}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(_ones(num_features))
            if bias:
                self.bias = Parameter(_zeros(num_features))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", _zeros(num_features))
            self.register_buffer("running_var", _ones(num_features))
            self.register_buffer("num_batches_tracked", _zeros((), dtype="int64"))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean._data[...] = 0
            self.running_var._data[...] = 1
            self.num_batches_tracked._data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self.weight._data[...] = 1
            if self.bias is not None:
                self.bias._data[...] = 0

    def _check_input_dim(self, input):
        pass

    def forward(self, input):
        self._check_input_dim(input)
        if input.ndim >= 2 and input.shape[1] != self.num_features:
            raise ShapeError(f"{type(self).__name__}: expected input with "
                             f"{self.num_features} channels (dim 1), got input of shape "
                             f"{input.shape}")
        eaf = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked._data[...] += 1
            if self.momentum is None:   # cumulative moving average
                eaf = 1.0 / float(self.num_batches_tracked._data)
        bn_training = self.training or (self.running_mean is None and
                                        self.running_var is None)
        use_stats = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if use_stats else None,
                            self.running_var if use_stats else None, self.weight,
                            self.bias, bn_training, eaf, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    def _check_input_dim(self, input):
        if input.ndim != 4:
            raise ShapeError(f"BatchNorm2d: expected 4D input (got {input.ndim}D input of "
                             f"shape {input.shape})")


class BatchNorm1d(_BatchNorm):
    def _check_input_dim(self, input):
        if input.ndim != 2:
            raise ShapeError(f"BatchNorm1d: expected 2D input (got {input.ndim}D input of "
                             f"shape {input.shape}); 3D (N, C, L) is not supported")
