from .. import _C
from ..autograd import no_grad
from ..tensor import Tensor
from .optimizer import Optimizer


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight_decay added to the gradient, bias
    correction); the update runs in place in C (_C.adam_step)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False):
        if isinstance(lr, Tensor):
            lr = lr.item()
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if amsgrad:
            raise NotImplementedError("Adam: amsgrad=True is not supported")
        if maximize:
            raise NotImplementedError("Adam: maximize=True is not supported")
        if decoupled_weight_decay:
            raise NotImplementedError("Adam: decoupled_weight_decay=True is not supported "
                                      "(AdamW)")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=False, maximize=False, foreach=foreach, capturable=False,
                        differentiable=False, fused=fused, decoupled_weight_decay=False)
        super().__init__(params, defaults)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            from ..autograd import enable_grad
            with enable_grad():
                loss = closure()
        with no_grad():
            for g in self.param_groups:
                b1, b2 = g["betas"]
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    st = self.state.setdefault(p, {})
                    if not st:
                        st["step"] = 0.0
                        st["exp_avg"] = Tensor._wrap(_C.empty(p.shape, "float32", True))
                        st["exp_avg_sq"] = Tensor._wrap(_C.empty(p.shape, "float32", True))
                    st["step"] = float(st["step"]) + 1.0
                    _C.adam_step(self._param_array(p), self._grad_array(p),
                                 st["exp_avg"]._data, st["exp_avg_sq"]._data,
                                 int(st["step"]), float(g["lr"]), float(b1), float(b2),
                                 float(g["eps"]), float(g["weight_decay"]))
        return loss
