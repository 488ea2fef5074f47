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
    AnomalyError(EdgetrainError, RuntimeError)      anomaly detection found a
        NaN/Inf (edgetrain/anomaly.py); RuntimeError, as torch's
    GradcheckError(EdgetrainError, RuntimeError)    et.autograd.gradcheck:
        analytical and numerical Jacobians differ (torch's GradcheckError is
        a RuntimeError too)
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


class AnomalyError(EdgetrainError, RuntimeError):
    """et.set_anomaly_detection(True): a NaN/Inf appeared; the message names
    the first operation (forward) or `<op>.backward` that produced it."""


class GradcheckError(EdgetrainError, RuntimeError):
    """et.autograd.gradcheck(): the analytical Jacobian (backward) differs from
    the finite-difference one; the message names the worst element."""


__all__ = ["EdgetrainError", "ShapeError", "DtypeError", "UnsupportedError",
           "BackendError", "StateDictError", "CheckpointError", "AnomalyError",
           "GradcheckError"]
