from .. import _C
from ..autograd import no_grad
from ..tensor import Tensor
from .optimizer import Optimizer


class SGD(Optimizer):
    """torch.optim.SGD: momentum, dampening, nesterov, weight_decay; the
    update runs in place in C (_C.sgd_step)."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None):
        if isinstance(lr, Tensor):
            lr = lr.item()
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if maximize:
            raise NotImplementedError("SGD: maximize=True is not supported")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=False,
                        foreach=foreach, differentiable=False, fused=fused)
        super().__init__(params, defaults)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            from ..autograd import enable_grad
            with enable_grad():
                loss = closure()
        with no_grad():
            for g in self.param_groups:
                mom = float(g["momentum"])
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    buf, first = None, False
                    if mom != 0.0:        # torch keeps no state without momentum
                        st = self.state.setdefault(p, {})
                        buf = st.get("momentum_buffer")
                        if buf is None:
                            buf = Tensor._wrap(_C.empty(p.shape, "float32"))
                            st["momentum_buffer"] = buf
                            first = True
                    _C.sgd_step(self._param_array(p), self._grad_array(p),
                                None if buf is None else buf._data,
                                float(g["lr"]), mom, float(g["dampening"]),
                                float(g["weight_decay"]), bool(g["nesterov"]), first)
        return loss
