from ..errors import ShapeError, UnsupportedError
from . import functional as F
from .module import Module


def _check_reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ShapeError(f"{reduction!r} is not a valid value for reduction "
                         "(use 'mean', 'sum' or 'none')")


class CrossEntropyLoss(Module):
    """log_softmax over dim 1 + nll_loss; reduction 'mean' (default),
    'sum' or 'none'."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0):
        super().__init__()
        if weight is not None:
            raise UnsupportedError("CrossEntropyLoss: class weights are not supported")
        if label_smoothing != 0.0:
            raise UnsupportedError("CrossEntropyLoss: label_smoothing is not supported")
        _check_reduction(reduction)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.weight = None

    def forward(self, input, target):
        return F.cross_entropy(input, target, ignore_index=self.ignore_index,
                               reduction=self.reduction)


class NLLLoss(Module):
    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean"):
        super().__init__()
        if weight is not None:
            raise UnsupportedError("NLLLoss: class weights are not supported")
        _check_reduction(reduction)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, input, target):
        return F.nll_loss(input, target, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class MSELoss(Module):
    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)
