"""edgetrain's exception classes.

The classes are the ones `edgetrain._C` raises, so an error raised by a C
kernel and one raised by Python code are caught by the same `except`:

    EdgetrainError                      base of every edgetrain exception
    ShapeError(EdgetrainError, ValueError)          bad shapes / values
    DtypeError(EdgetrainError, TypeError)           wrong dtype / type
    UnsupportedError(EdgetrainError, NotImplementedError)
    BackendError(EdgetrainError, RuntimeError)      a backend failed
    StateDictError(ShapeError, RuntimeError)        load_state_dict mismatch
        (RuntimeError too, because PyTorch raises RuntimeError there)
    CheckpointError(EdgetrainError, ValueError)     et.load: not a checkpoint,
        truncated, corrupted (checksum) or an unsupported format version
"""
from . import _C

EdgetrainError = _C.EdgetrainError
ShapeError = _C.ShapeError
DtypeError = _C.DtypeError
UnsupportedError = _C.UnsupportedError
BackendError = _C.BackendError


class StateDictError(ShapeError, RuntimeError):
    """load_state_dict(): missing, unexpected or wrong-shaped keys."""


class CheckpointError(EdgetrainError, ValueError):
    """et.load(): the file is not a whole, intact edgetrain checkpoint of a
    supported version; the message names the file and what is wrong."""


__all__ = ["EdgetrainError", "ShapeError", "DtypeError", "UnsupportedError",
           "BackendError", "StateDictError", "CheckpointError"]
