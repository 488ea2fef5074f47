"""The global random generator behind every random choice edgetrain makes
(parameter init, dropout masks, randn/rand, DataLoader shuffling).

    et.manual_seed(1234)          # reproducible from here on
    rng = et.random.default_generator()   # a numpy.random.Generator
"""
import numpy as np

# Like PyTorch, a fixed seed at start-up: runs are reproducible even without
# manual_seed (torch's default CPU seed is 67280421310721).
_DEFAULT_SEED = 67280421310721
_seed = _DEFAULT_SEED
_generator = np.random.Generator(np.random.PCG64(_seed))


def manual_seed(seed):
    """Seeds the global generator; returns it (torch returns a Generator)."""
    global _generator, _seed
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"manual_seed: seed must be non-negative, got {seed}")
    _seed = seed
    _generator = np.random.Generator(np.random.PCG64(seed))
    return _generator


def seed():
    """Seeds the generator from OS entropy; returns the seed used."""
    s = int(np.random.SeedSequence().entropy % (2 ** 63))
    manual_seed(s)
    return s


def initial_seed():
    return _seed


def default_generator():
    """The numpy.random.Generator edgetrain draws from."""
    return _generator


def get_rng_state():
    return _generator.bit_generator.state


def set_rng_state(state):
    _generator.bit_generator.state = state


__all__ = ["manual_seed", "seed", "initial_seed", "default_generator",
           "get_rng_state", "set_rng_state"]
