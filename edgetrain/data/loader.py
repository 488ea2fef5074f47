"""Mini-batch iteration: `DataLoader` and `TensorDataset`, PyTorch's names and semantics.

Batches are `edgetrain.Tensor`s. Collation follows torch's `default_collate`
with one deliberate difference: edgetrain computes in float32, so floating
data (float16/float64 arrays, Python floats) becomes float32. Integer and bool
data keep the dtype numpy gives (uint8 MNIST labels stay uint8, Python ints
become int64), exactly like torch; convert labels to int64 before
`cross_entropy` (as in torch, which rejects uint8 targets), e.g.
``TensorDataset(images, labels.astype(np.int64))``.

Shuffling: with ``seed`` given, the loader owns ``numpy.random.Generator(seed)``
and draws a fresh permutation from it at the start of every epoch (every
``iter(loader)``): two loaders built with the same seed yield the same
sequence of epochs, and consecutive epochs differ. Without ``seed`` the
permutation comes from edgetrain's default generator, so
``edgetrain.manual_seed`` makes the run reproducible.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["DataLoader", "TensorDataset", "default_collate"]


def _as_numpy(x):
    """numpy view/copy of an ndarray, an edgetrain Tensor or anything with .numpy()."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        return np.asarray(x.detach().numpy())
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    return np.asarray(x)


def _to_tensor(arr: np.ndarray):
    import edgetrain as et  # lazy: edgetrain/__init__ imports this package

    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        return et.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if arr.dtype.kind in "iub":
        return et.tensor(np.ascontiguousarray(arr), dtype=arr.dtype.name)
    raise TypeError(f"DataLoader: cannot make a tensor from a {arr.dtype} array of shape {arr.shape}")


def default_collate(batch):
    """Stack a list of samples into a batch (torch.utils.data.default_collate's rules).

    ndarray/Tensor samples -> stacked Tensor (N, *shape); Python/numpy scalars ->
    Tensor (N,) (ints int64, floats float32, bools bool); tuples/lists -> a tuple
    of collated fields; dicts -> a dict of collated values; str -> list.
    """
    if len(batch) == 0:
        raise ValueError("default_collate: empty batch")
    elem = batch[0]
    if isinstance(elem, dict):
        return {k: default_collate([d[k] for d in batch]) for k in elem}
    if isinstance(elem, (tuple, list)):
        n = len(elem)
        for i, s in enumerate(batch):
            if len(s) != n:
                raise ValueError(
                    f"default_collate: sample 0 has {n} fields but sample {i} has {len(s)}")
        return tuple(default_collate([s[j] for s in batch]) for j in range(n))
    if isinstance(elem, (str, bytes)):
        return list(batch)
    if isinstance(elem, (bool, np.bool_)):
        return _to_tensor(np.asarray(batch, dtype=np.bool_))
    if isinstance(elem, numbers.Integral) and not isinstance(elem, np.generic):
        return _to_tensor(np.asarray(batch, dtype=np.int64))
    if isinstance(elem, numbers.Real) and not isinstance(elem, np.generic):
        return _to_tensor(np.asarray(batch, dtype=np.float32))
    arrays = [_as_numpy(s) for s in batch]
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise ValueError(
                f"default_collate: sample 0 has shape {shape} but sample {i} has shape {a.shape}")
    return _to_tensor(np.stack(arrays))


class TensorDataset:
    """Dataset of equal-length arrays/Tensors; item i is the tuple of their i-th rows."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset: needs at least one array")
        self.tensors = tuple(_as_numpy(t) for t in tensors)
        n = len(self.tensors[0])
        for i, t in enumerate(self.tensors):
            if t.ndim == 0:
                raise ValueError(f"TensorDataset: array {i} is 0-d, need a first (sample) dimension")
            if len(t) != n:
                lens = [len(x) for x in self.tensors]
                raise ValueError(f"TensorDataset: arrays have different lengths {lens}")

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)


class DataLoader:
    """Iterate over `dataset` in mini-batches.

    dataset: a tuple/list of equal-length arrays/Tensors (fast path: batches
    are gathered by fancy indexing, one Tensor per array, yielded as a tuple),
    a `TensorDataset` (same fast path), or any object with ``__len__`` and
    ``__getitem__`` (samples gathered one by one and stacked by
    `default_collate`).
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be an integer >= 1, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self._generator = np.random.default_rng(seed) if seed is not None else None

        if isinstance(dataset, TensorDataset):
            self._arrays = dataset.tensors
        elif isinstance(dataset, (tuple, list)) and len(dataset) > 0 and all(
                isinstance(a, np.ndarray) or hasattr(a, "numpy") for a in dataset):
            self._arrays = TensorDataset(*dataset).tensors
        elif hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
            self._arrays = None
        else:
            raise TypeError(
                "DataLoader: dataset must be a tuple/list of equal-length arrays or an object "
                f"with __len__ and __getitem__, got {type(dataset).__name__}")
        self._n = len(self._arrays[0]) if self._arrays is not None else len(dataset)

    def __len__(self):
        if self.drop_last:
            return self._n // self.batch_size
        return (self._n + self.batch_size - 1) // self.batch_size

    def _order(self):
        if not self.shuffle:
            return np.arange(self._n)
        if self._generator is not None:
            return self._generator.permutation(self._n)
        from .. import random as _random  # edgetrain.random

        return _random.default_generator().permutation(self._n)

    def __iter__(self):
        order = self._order()
        nb = len(self)
        for b in range(nb):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self._arrays is not None:
                yield tuple(_to_tensor(a[idx]) for a in self._arrays)
            else:
                yield default_collate([self.dataset[int(i)] for i in idx])
