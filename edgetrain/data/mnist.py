"""MNIST-format datasets (MNIST, Fashion-MNIST, the 10k subset in shared/data)."""
from __future__ import annotations

import os

import numpy as np

from .idx import read_idx

__all__ = ["load_mnist", "find_mnist_file"]


def _candidates(prefix: str, kind: str, rank: int):
    # train-images-idx3-ubyte, train-images.idx3-ubyte, each raw or .gz
    for sep in ("-", "."):
        base = f"{prefix}-{kind}{sep}idx{rank}-ubyte"
        yield base
        yield base + ".gz"


def find_mnist_file(directory, prefix: str, kind: str, rank: int) -> str:
    """Path of `<prefix>-<kind>-idx<rank>-ubyte[.gz]` (or the `.idx<rank>-ubyte` spelling)."""
    names = list(_candidates(prefix, kind, rank))
    for name in names:
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(
        f"load_mnist: no {prefix} {kind} file in {directory!r} (looked for: {', '.join(names)})")


def load_mnist(directory, train: bool = True):
    """Load an MNIST-format split from `directory`.

    Returns ``(images, labels)``: images uint8 (N, H, W) (28x28 for MNIST and
    Fashion-MNIST), labels uint8 (N,). ``train=True`` reads the ``train-*``
    files, ``train=False`` the ``t10k-*`` files. Raises FileNotFoundError naming
    the directory / the file names tried, ValueError for malformed files or when
    the image and label counts differ.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"load_mnist: directory {directory!r} does not exist")
    prefix = "train" if train else "t10k"
    img_path = find_mnist_file(directory, prefix, "images", 3)
    lbl_path = find_mnist_file(directory, prefix, "labels", 1)
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"load_mnist: {img_path!r}: expected uint8 images (N, H, W), got {images.dtype.name} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"load_mnist: {lbl_path!r}: expected uint8 labels (N,), got {labels.dtype.name} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"load_mnist: {images.shape[0]} images in {img_path!r} but {labels.shape[0]} labels in {lbl_path!r}")
    return images, labels
