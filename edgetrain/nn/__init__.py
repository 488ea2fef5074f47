"""edgetrain.nn: PyTorch-style modules (same names, arguments, defaults,
parameter layouts and state_dict keys)."""
from . import functional, init
from .activation import LogSoftmax, ReLU, ReLU6, Softmax
from .batchnorm import BatchNorm1d, BatchNorm2d
from .container import ModuleDict, ModuleList, Sequential
from .conv import Conv2d
from .dropout import Dropout
from .flatten import Flatten, Unflatten
from .linear import Identity, Linear
from .loss import CrossEntropyLoss, MSELoss, NLLLoss
from .module import Module
from .parameter import Parameter
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = ["Module", "Parameter", "Conv2d", "Linear", "BatchNorm2d", "BatchNorm1d", "ReLU", "ReLU6",
           "Softmax", "LogSoftmax", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "Flatten", "Unflatten", "Dropout", "Sequential", "ModuleList", "ModuleDict",
           "Identity", "CrossEntropyLoss", "NLLLoss", "MSELoss", "functional", "init"]
