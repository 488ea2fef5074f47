"""edgetrain.optim: torch.optim's SGD and Adam (same update rules, same
param_groups / state_dict layout); updates run in place in C."""
from .adam import Adam
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam"]
