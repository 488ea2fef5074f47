"""edgetrain.data: IDX / MNIST readers and mini-batch loading."""
from .idx import read_idx
from .mnist import load_mnist
from .loader import DataLoader, TensorDataset, default_collate

__all__ = ["read_idx", "load_mnist", "DataLoader", "TensorDataset", "default_collate"]
