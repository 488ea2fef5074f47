"""nn.Parameter: a Tensor that a Module registers as a parameter."""
import numpy as np

from ..tensor import Tensor, _copy_array


class Parameter(Tensor):
    """A leaf Tensor with requires_grad=True (by default).

    Parameter(data) shares `data`'s array when data is a Tensor (like
    torch.nn.Parameter(t), which aliases t's storage); other inputs are
    copied to float32.
    """

    def __new__(cls, data=None, requires_grad=True):
        return Tensor.__new__(cls)

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            arr = np.empty((0,), dtype=np.float32)
        elif isinstance(data, Tensor):
            arr = data._data
        else:
            a = np.asarray(data)
            arr = _copy_array(a, np.float32 if a.dtype.kind != "f" or a.dtype == np.float64
                              else a.dtype)
        self._data = arr
        self.grad = None
        self.grad_fn = None
        self._requires_grad = False
        self.requires_grad = requires_grad

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    def __reduce_ex__(self, proto):
        return (Parameter, (Tensor._wrap(self._data), self.requires_grad))

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        p = Parameter(Tensor._wrap(self._data.copy()), self.requires_grad)
        memo[id(self)] = p
        return p
