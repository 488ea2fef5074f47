"""Shared fixtures.

- Torch (the reference) runs on 2 threads: the suite shares a 2-core machine.
- `mnist10k_dir`: the 10k-sample MNIST subset, `<repo>/../shared/data/mnist10k`
  (the repo is cloned with `shared/` beside it); override with the environment
  variable EDGETRAIN_MNIST10K. Tests that need it skip, saying why, when absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MNIST10K_DIR = Path(os.environ.get("EDGETRAIN_MNIST10K", REPO_ROOT.parent / "shared" / "data" / "mnist10k"))

try:  # torch is the reference in tests only
    import torch

    # One thread count for the whole suite: torch's reductions and max-pool
    # tie-breaking depend on it, and the training-parity tolerances were measured
    # at 2 threads (this machine's cores).
    torch.set_num_threads(2)
except ImportError:  # pragma: no cover - tests needing torch importorskip it
    torch = None


@pytest.fixture(scope="session")
def mnist10k_dir() -> Path:
    if not (MNIST10K_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST 10k subset not found at {MNIST10K_DIR} "
                    "(expected <repo>/../shared/data/mnist10k or $EDGETRAIN_MNIST10K)")
    return MNIST10K_DIR
