"""RMSProp with TensorFlow 1 semantics (``tf.train.RMSPropOptimizer``), as the LASEM code trains.

Why not ``torch.optim.RMSprop``: PyTorch's defaults (alpha 0.99, eps 1e-8 added *outside* the
square root, square-average started at 0) take much larger first steps. TF1 starts the square
average at 1.0 and puts eps inside the root (lasem.md 6):

    ms  <- rho * ms + (1 - rho) * g^2            (ms starts at 1.0)
    mom <- momentum * mom + lr * g / sqrt(ms + eps)
    p   <- p - mom                                (momentum 0: p <- p - lr * g / sqrt(ms + eps))

A parameter whose gradient is ``None`` in a step is skipped (its ``ms`` does not decay), as TF
skips variables without a gradient. The LASEM loop builds a new optimiser per task, so the
state restarts at ms = 1 for every task, as the original's graph rebuild did.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


class RMSpropTF(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-10,
                 momentum: float = 0.0, weight_decay: float = 0.0, initial_accumulator: float = 1.0) -> None:
        if lr <= 0 or not 0 <= rho < 1 or eps < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"invalid RMSpropTF settings lr={lr} rho={rho} eps={eps} momentum={momentum}")
        defaults = dict(lr=lr, rho=rho, eps=eps, momentum=momentum, weight_decay=weight_decay,
                        initial_accumulator=initial_accumulator)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, rho, eps, momentum = group["lr"], group["rho"], group["eps"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["ms"] = torch.full_like(p, group["initial_accumulator"])
                    if momentum:
                        state["mom"] = torch.zeros_like(p)
                ms = state["ms"]
                ms.mul_(rho).addcmul_(g, g, value=1 - rho)
                update = g / (ms + eps).sqrt()
                if momentum:
                    mom = state["mom"]
                    mom.mul_(momentum).add_(update, alpha=lr)
                    p.sub_(mom)
                else:
                    p.add_(update, alpha=-lr)
        return loss
