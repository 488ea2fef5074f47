"""Optimizer base class with torch.optim's param_groups / state layout.

state_dict() -> {"state": {index: {name: ndarray|float}},
                 "param_groups": [{...options..., "params": [indices]}]}
(indices number the parameters across groups in order, as PyTorch does),
so a torch.optim state_dict (tensors converted with .numpy()) loads too.
"""
import copy
import functools

import numpy as np

from .. import autograd as _autograd
from ..errors import ShapeError
from ..tensor import Tensor, _to_numpy


class _RequiredParameter:
    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


def _profiled_step(step):
    """Wraps a subclass's step() so that a running edgetrain.profiler profile
    sees it as one "optimizer" range; off, one `is None` check."""
    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        ev = _autograd._profiler
        if ev is None:
            return step(self, *args, **kwargs)
        t0 = _autograd._now()
        try:
            return step(self, *args, **kwargs)
        finally:
            ev.append(("optimizer", type(self).__name__, "step", t0, _autograd._now(),
                       _autograd._thread_id()))
    wrapper._et_profiled = True
    return wrapper


class Optimizer:
    def __init_subclass__(cls, **kwargs):
        # every optimizer's step, including user subclasses, is profiled
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "_et_profiled", False):
            cls.step = _profiled_step(step)

    def __init__(self, params, defaults):
        self.defaults = defaults
        self.state = {}            # Parameter -> {name: value}
        self.param_groups = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an "
                            "iterable of Tensors or dicts, but got a Tensor")
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for g in param_groups:
            self.add_param_group(g)

    def __repr__(self):
        s = type(self).__name__ + " ("
        for i, g in enumerate(self.param_groups):
            s += f"\nParameter Group {i}"
            for k in sorted(g):
                if k != "params":
                    s += f"\n    {k}: {g[k]}"
        return s + "\n)"

    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered "
                            "collections, but the ordering of tensors in sets will change "
                            "between runs. Please use a list instead.")
        else:
            params = list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the "
                                f"params is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        group = dict(param_group)
        group["params"] = params
        for k, v in self.defaults.items():
            if v is required and k not in group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {k}")
            group.setdefault(k, v)
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in existing for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad._data[...] = 0

    def step(self, closure=None):
        raise NotImplementedError

    @staticmethod
    def _grad_array(p):
        g = p.grad._data
        if g.dtype != np.float32 or not g.flags.c_contiguous:
            g = np.ascontiguousarray(g, dtype=np.float32)
        return g

    @staticmethod
    def _param_array(p):
        a = p._data
        if a.dtype != np.float32 or not a.flags.c_contiguous or not a.flags.writeable:
            raise ShapeError(f"{'optimizer'}: parameters must be writable C-contiguous "
                             f"float32 arrays, got dtype {a.dtype}, shape {a.shape}")
        return a

    # -- state dict ---------------------------------------------------------
    def state_dict(self):
        index, groups, start = {}, [], 0
        for g in self.param_groups:
            ids = list(range(start, start + len(g["params"])))
            for p, i in zip(g["params"], ids):
                index.setdefault(id(p), i)
            start += len(ids)
            gd = {k: v for k, v in g.items() if k != "params"}
            gd["params"] = ids
            groups.append(gd)
        state = {}
        for p, s in self.state.items():
            if id(p) in index:
                state[index[id(p)]] = {k: (v._data.copy() if isinstance(v, Tensor) else
                                           copy.deepcopy(v)) for k, v in s.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = self.param_groups
        saved = state_dict["param_groups"]
        if len(groups) != len(saved):
            raise ValueError("loaded state dict has a different number of parameter groups "
                             f"({len(saved)} vs {len(groups)})")
        for i, (g, sg) in enumerate(zip(groups, saved)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 f"match the size of optimizer's group {i} "
                                 f"({len(sg['params'])} vs {len(g['params'])} parameters)")
        id_map = {}
        for g, sg in zip(groups, saved):
            for p, i in zip(g["params"], sg["params"]):
                id_map[i] = p
        new_state = {}
        for k, s in state_dict["state"].items():
            key = int(k) if not isinstance(k, int) else k
            if key not in id_map:
                continue
            p = id_map[key]
            ns = {}
            for name, v in s.items():
                if v is None:
                    ns[name] = None
                    continue
                arr = _to_numpy(v)
                if name == "step":
                    ns[name] = float(arr)
                elif arr.ndim == 0 and not isinstance(v, np.ndarray) and not hasattr(v, "numpy"):
                    ns[name] = copy.deepcopy(v)
                else:
                    if arr.shape != p.shape:
                        raise ShapeError(f"optimizer state {name!r} of parameter {key} has "
                                         f"shape {arr.shape}, the parameter has {p.shape}")
                    ns[name] = Tensor._wrap(np.array(arr, dtype=np.float32, order="C"))
            new_state[p] = ns
        self.state = new_state
        for g, sg in zip(groups, saved):
            for k, v in sg.items():
                if k != "params":
                    g[k] = copy.deepcopy(v)
