"""edgetrain.amp: dynamic loss scaling for fp16 training (torch.amp.GradScaler).

Why: under `et.precision("fp16")` the operands of every conv2d / linear
product (dy, w, x) are rounded to IEEE half. Small gradients (|dy| < 2^-25)
flush to zero there, so the loss is multiplied by a large scale before
backward() and the gradients are divided by it again before the optimizer
step. Too large a scale overflows half instead (|v| >= 65520 -> inf, which the
fp16 path propagates as inf / NaN), so the scale is adjusted as training goes:

* a step whose gradients hold an inf / NaN is skipped (parameters and optimizer
  state untouched) and update() multiplies the scale by `backoff_factor`;
* after `growth_interval` consecutive good steps update() multiplies it by
  `growth_factor`.

The loop, as in PyTorch:

    scaler = et.amp.GradScaler()
    for x, y in loader:
        opt.zero_grad()
        with et.precision("fp16"):
            loss = crit(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)              # optional: only to clip / inspect grads
        scaler.step(opt)                  # skipped when a grad is inf / NaN
        scaler.update()

Same interface and arithmetic as torch.amp.GradScaler: the scale is a float32
value, grads are multiplied by float32(1 / float64(scale)), backoff and growth
are computed in float64 and stored as float32, a growth that would overflow
float32 is dropped; state_dict() has torch's keys. Differences, on purpose:
`device` is "cpu" (edgetrain's tensors live on the CPU; the offloaded products
need no scaler of their own), bad arguments raise ValueError (torch asserts or
accepts them), grads are checked for inf / NaN *after* unscaling (a superset of
torch's check: it also catches a finite grad that overflows when the scale is
below 1), and growth happens once the good-step count reaches growth_interval
(>=, so lowering the interval below the current count does not stop growth).
"""
import math
import numbers
from collections import abc

import numpy as np

from .errors import StateDictError
from .tensor import Tensor

__all__ = ["GradScaler"]

# per-optimizer stage within one iteration (torch.amp.grad_scaler.OptState)
_READY, _UNSCALED, _STEPPED = "ready", "unscaled", "stepped"


def _real(name, value):
    """float(value) for a real number (not a bool); ValueError naming `name` else."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"GradScaler: {name} must be a number or a 1-element tensor, "
                             f"got a tensor of shape {value.shape}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"GradScaler: {name} must be a real number, got {value!r} "
                         f"({type(value).__name__})")
    return float(value)


def _check_scale(name, value):
    """A scale as the float32 it is stored as: finite and > 0 *in float32*
    (1e39 would become inf and 1e-50 zero)."""
    v = _real(name, value)
    with np.errstate(over="ignore"):
        v32 = np.float32(v) if math.isfinite(v) else np.float32(np.nan)
    if not (math.isfinite(v) and np.isfinite(v32) and v32 > 0):
        raise ValueError(f"GradScaler: {name} must be a finite positive float32 value, got "
                         f"{value!r}")
    return v


def _check_growth_factor(value):
    v = _real("growth_factor", value)
    if not (math.isfinite(v) and v > 1.0):
        raise ValueError(f"GradScaler: growth_factor must be finite and > 1.0, got {value!r}")
    return v


def _check_backoff_factor(value):
    v = _real("backoff_factor", value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {value!r}")
    return v


def _check_growth_interval(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < 1:
        raise ValueError(f"GradScaler: growth_interval must be a positive integer, got "
                         f"{value!r}")
    return int(value)


def _check_growth_tracker(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < 0:
        raise ValueError(f"GradScaler: _growth_tracker must be an integer >= 0, got "
                         f"{value!r}")
    return int(value)


def _fresh_state():
    # found_inf: None until unscale_ ran; n_grads: grads it looked at
    return {"stage": _READY, "found_inf": None, "n_grads": 0}


class GradScaler:
    """Dynamic loss scaler with torch.amp.GradScaler's interface (see the
    module docstring).

    GradScaler(device="cpu", init_scale=2.**16, growth_factor=2.0,
               backoff_factor=0.5, growth_interval=2000, enabled=True)

    enabled=False makes every method a pass-through: scale() returns its input,
    step() just calls optimizer.step(), get_scale() is 1.0, state_dict() is {}.
    """

    def __init__(self, device="cpu", init_scale=2.0 ** 16, growth_factor=2.0,
                 backoff_factor=0.5, growth_interval=2000, enabled=True):
        if not isinstance(device, str):
            raise ValueError(f"GradScaler: device must be a str ('cpu'), got {device!r}; "
                             "the first positional argument is the device, as in "
                             "torch.amp.GradScaler (pass init_scale=... by keyword)")
        if device != "cpu":
            raise ValueError(f"GradScaler: device must be 'cpu', got {device!r}: edgetrain's "
                             "tensors and gradients live on the CPU (the backend offloads "
                             "the products itself)")
        # checked even when disabled: a typo should not wait until amp is switched on
        self._init_scale = _check_scale("init_scale", init_scale)
        self._growth_factor = _check_growth_factor(growth_factor)
        self._backoff_factor = _check_backoff_factor(backoff_factor)
        self._growth_interval = _check_growth_interval(growth_interval)
        self._device = device
        self._enabled = bool(enabled)
        self._scale = None              # np.float32, set by the first scale() (as torch)
        self._growth_tracker = 0        # consecutive good steps since the last change
        self._per_optimizer_states = {}  # id(optimizer) -> _fresh_state()

    def __repr__(self):
        if not self._enabled:
            return "GradScaler(enabled=False)"
        return (f"GradScaler(scale={self.get_scale()}, growth_factor={self._growth_factor}, "
                f"backoff_factor={self._backoff_factor}, "
                f"growth_interval={self._growth_interval})")

    # -- scaling ------------------------------------------------------------
    def _require_scale(self, funcname):
        if self._scale is None:
            raise RuntimeError(f"GradScaler.{funcname}: scale() was never called: use "
                               "scaler.scale(loss).backward() before unscale_() / step() / "
                               "update()")
        return self._scale

    def _state(self, optimizer):
        return self._per_optimizer_states.setdefault(id(optimizer), _fresh_state())

    def scale(self, outputs):
        """outputs * scale: a Tensor, or (nested) lists / tuples of Tensors (same
        container types back; any other iterable gives a lazy map, as torch)."""
        if not self._enabled:
            return outputs
        if self._scale is None:
            self._scale = np.float32(self._init_scale)
        s = float(self._scale)          # a float32 value: exact as a Python float

        def apply(val):
            if isinstance(val, Tensor):
                return val * s
            if isinstance(val, (str, bytes, np.ndarray)) or not isinstance(val, abc.Iterable):
                raise ValueError("GradScaler.scale: outputs must be a Tensor or an iterable "
                                 f"of Tensors, got {type(val).__name__}")
            it = map(apply, val)
            return type(val)(it) if isinstance(val, (list, tuple)) else it

        return apply(outputs)

    def unscale_(self, optimizer):
        """Divides the gradients of `optimizer`'s parameters by the scale, in
        place, and records whether any is inf / NaN. Once per optimizer per
        iteration (a second call before update() raises RuntimeError)."""
        if not self._enabled:
            return
        scale = self._require_scale("unscale_")
        st = self._state(optimizer)
        if st["stage"] == _UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since "
                               "the last update().")
        if st["stage"] == _STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        # torch: the reciprocal in float64, rounded to float32, then g * inv in
        # the grad's dtype (float32 grads: one float32 multiply, bit for bit)
        inv = np.float32(1.0 / np.float64(scale))
        # checked before anything is divided, so an error leaves the grads as they were
        todo, seen = [], set()
        for gi, group in enumerate(optimizer.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None or id(p.grad._data) in seen:  # shared array: once
                    continue
                seen.add(id(p.grad._data))
                if p.grad._data.dtype == np.float16:
                    raise ValueError(f"GradScaler.unscale_: attempting to unscale FP16 "
                                     f"gradients (param_groups[{gi}]['params'][{pi}], shape "
                                     f"{p.shape}): master parameters must be float32")
                todo.append(p)
        found_inf = False
        for p in todo:
            g = p.grad._data
            with np.errstate(over="ignore", invalid="ignore"):   # reported via found_inf
                if g.flags.writeable:
                    np.multiply(g, g.dtype.type(inv), out=g)
                else:                   # read-only (e.g. a user-assigned broadcast): copy
                    g = g * g.dtype.type(inv)
                    p.grad = Tensor._wrap(g)
            # after unscaling: catches inf / NaN in the scaled grads and a finite
            # value that overflows when scale < 1
            if not found_inf and not np.isfinite(g).all():
                found_inf = True
        n = len(todo)
        st["found_inf"] = found_inf
        st["n_grads"] = n
        st["stage"] = _UNSCALED

    def step(self, optimizer, *args, **kwargs):
        """unscale_(optimizer) unless done this iteration, then optimizer.step(*args,
        **kwargs) unless a gradient is inf / NaN. Returns optimizer.step()'s
        value, or None when the step was skipped."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs or (args and callable(args[0])):
            # the closure would re-run backward on an unscaled loss
            raise RuntimeError("Closure use is not currently supported if GradScaler is "
                               "enabled.")
        self._require_scale("step")
        st = self._state(optimizer)
        if st["stage"] == _STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if st["stage"] == _READY:
            self.unscale_(optimizer)
        if st["n_grads"] == 0:
            # nothing was unscaled: leave the optimizer ready for a retry
            self._per_optimizer_states.pop(id(optimizer), None)
            raise RuntimeError("GradScaler.step: no inf checks were recorded for this "
                               "optimizer: none of its parameters has a .grad (was "
                               "scaler.scale(loss).backward() called?)")
        retval = None
        if not st["found_inf"]:
            retval = optimizer.step(*args, **kwargs)
        st["stage"] = _STEPPED
        return retval

    def update(self, new_scale=None):
        """End of iteration: the scale times backoff_factor if any optimizer saw
        an inf / NaN gradient since the last update(), times growth_factor after
        growth_interval consecutive good iterations; or `new_scale` when given
        (a number or a 1-element Tensor)."""
        if not self._enabled:
            return
        scale = self._require_scale("update")
        if new_scale is not None:
            if isinstance(new_scale, Tensor) and new_scale.requires_grad:
                raise ValueError("GradScaler.update: new_scale must not require grad")
            self._scale = np.float32(_check_scale("new_scale", new_scale))
        else:
            found = [s["found_inf"] for s in self._per_optimizer_states.values()
                     if s["found_inf"] is not None and s["n_grads"] > 0]
            if not found:
                raise RuntimeError("GradScaler.update: no inf checks were recorded prior to "
                                   "update() (call scaler.step(optimizer) first)")
            # torch._amp_update_scale_ (CPU kernel): float32 scale times a double
            # factor, stored as float32; a growth to inf is dropped
            if any(found):
                self._scale = np.float32(np.float64(scale) * self._backoff_factor)
                self._growth_tracker = 0
            else:
                good = self._growth_tracker + 1
                if good >= self._growth_interval:
                    with np.errstate(over="ignore"):
                        grown = np.float32(np.float64(scale) * self._growth_factor)
                    if np.isfinite(grown):
                        self._scale = grown
                    self._growth_tracker = 0
                else:
                    self._growth_tracker = good
        self._per_optimizer_states = {}

    # -- accessors (torch names) -------------------------------------------
    def get_scale(self):
        """The current scale as a Python float (1.0 when disabled)."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else float(self._scale)

    def get_growth_factor(self):
        return self._growth_factor

    def set_growth_factor(self, new_factor):
        self._growth_factor = _check_growth_factor(new_factor)

    def get_backoff_factor(self):
        return self._backoff_factor

    def set_backoff_factor(self, new_factor):
        self._backoff_factor = _check_backoff_factor(new_factor)

    def get_growth_interval(self):
        return self._growth_interval

    def set_growth_interval(self, new_interval):
        self._growth_interval = _check_growth_interval(new_interval)

    def _get_growth_tracker(self):
        return self._growth_tracker if self._enabled else 0

    def is_enabled(self):
        return self._enabled

    # -- checkpointing -------------------------------------------------------
    def state_dict(self):
        """{"scale", "growth_factor", "backoff_factor", "growth_interval",
        "_growth_tracker"} (torch's keys and Python types); {} when disabled.
        Take it after update()."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval,
                "_growth_tracker": self._get_growth_tracker()}

    def load_state_dict(self, state_dict):
        """Loads state_dict() output (also a torch.amp.GradScaler's); a no-op
        when disabled. Values are checked as the constructor's arguments."""
        if not self._enabled:
            return
        if not isinstance(state_dict, abc.Mapping):
            raise TypeError(f"GradScaler.load_state_dict: expected a dict, got "
                            f"{type(state_dict).__name__}")
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was "
                               "saved from a disabled instance of GradScaler.")
        keys = ("scale", "growth_factor", "backoff_factor", "growth_interval",
                "_growth_tracker")
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise StateDictError(f"GradScaler.load_state_dict: missing key(s) "
                                 f"{', '.join(repr(k) for k in missing)} (expected "
                                 f"{', '.join(repr(k) for k in keys)})")
        # check everything before changing anything
        scale = _check_scale("scale", state_dict["scale"])
        gf = _check_growth_factor(state_dict["growth_factor"])
        bf = _check_backoff_factor(state_dict["backoff_factor"])
        gi = _check_growth_interval(state_dict["growth_interval"])
        gt = _check_growth_tracker(state_dict["_growth_tracker"])
        self._init_scale = scale
        if self._scale is not None:
            self._scale = np.float32(scale)
        self._growth_factor, self._backoff_factor, self._growth_interval = gf, bf, gi
        self._growth_tracker = gt

    def __getstate__(self):
        if self._enabled and self._per_optimizer_states:
            raise RuntimeError("A GradScaler instance may only be pickled at the beginning "
                               "of an iteration, or at the end after scaler.update().")
        return self.__dict__.copy()
