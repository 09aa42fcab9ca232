"""SGD with momentum, Nesterov and weight decay: the update ``torch.optim.SGD`` computes
(its single-tensor path, the one it takes on CPU), bit for bit, without ``torch.optim``.

Why not ``torch.optim.SGD`` itself: constructing any ``torch.optim`` optimizer imports
``torch._dynamo`` (its methods are wrapped in ``torch._disable_dynamo``), one to two
seconds of CPU in every process that trains, that is in every Ray worker of every
simulation, for nothing fedssl uses. ``tests/test_optim.py`` checks the update and the
momentum state against ``torch.optim.SGD`` bit for bit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch


class SGD:
    """``torch.optim.SGD(params, lr, momentum, weight_decay=, nesterov=)`` (dampening 0)
    for the calls fedssl makes: ``zero_grad``, ``step`` and the momentum buffers in
    ``state[param]["momentum_buffer"]``, as torch keeps them."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay, self.nesterov = float(lr), momentum, weight_decay, nesterov
        self.state: defaultdict[torch.Tensor, dict[str, torch.Tensor]] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is None:  # torch skips a parameter without gradient, its buffer too
                continue
            grad = p.grad
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1)  # 1 - dampening, dampening 0
                grad = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
            p.add_(grad, alpha=-self.lr)
