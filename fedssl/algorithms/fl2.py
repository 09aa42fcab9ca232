"""(FL)^2 (Lee, Le, Shin & Lee, NeurIPS 2024, arXiv 2410.23227; code seungjoo-ai/FLFL-NeurIPS24).

Labels at the server only, as in SemiFL. At the start of its round a client predicts
its whole unlabeled shard once with the received global model (eval mode, one weak
view): probabilities p_i, confidence c_i = max_k p_ik, pseudo-label y_i = argmax_k p_ik.

Client-specific adaptive thresholds (CAT), from those predictions:

    tau_g    = mean_i c_i                          the client's learning status
    p~(k)    = mean_i p_ik                         its class-wise confidence
    tau(k)   = tau_g * p~(k) / max_k' p~(k')
    selected = { i : c_i >= tau(y_i) }

Sharpness-aware consistency regularisation (SACR) on the selected samples that are
also confident, C = { i selected : c_i >= client.fl2.sacr_threshold }. With S the
selected samples of the batch, z = f_w(strong(x)) and ASAM's operator T_w = |w| + eta
on weight tensors (1 on biases; T = 1 everywhere for plain SAM):

    g     = grad_w CE(z_C, y_C)
    eps   = rho * T_w^2 g / ||T_w g||              (ASAM, Kwon et al. 2021)
    L_sa  = sum_{i in C} KL(softmax(z_i) || softmax(f_{w+eps}(strong(x_i)) / T)) / |S|
    step gradient = lambda_u * grad_w CE(z_S, y_S)  +  grad_w L_sa evaluated at w + eps

(the target z_i is detached; T = client.fl2.temperature divides the perturbed logits
only, as in the reference). The loss handed to the shared trainer is
lambda_u * CE(z_S, y_S) + L_sa, with L_sa computed by calling the model with the
weights w + eps (``torch.func.functional_call``, eps detached), so that its gradient
is the step gradient above and the module's weights are never touched.

Learning-status-aware aggregation: each client reports ``status_weight`` = 1 - tau_g
(``train_status_weight`` in its reply); :attr:`weight_key` makes the server's
strategy weight updates by it (Flower's ``weighted_by_key``), normalised over the
round's accepted clients, so a client on which the global model is still unsure
counts more. The server side is otherwise SemiFL's: fine-tuning on its labels after
each aggregation (``fedssl.server_training``) and global momentum 0.5 with server lr 1
(``server.strategy = "fedavgm"``, ``server.server_lr = 1``, ``server.server_momentum
= 0.5``, as the reference's ``make_optimizer(fedavg_optim=True)``).

Defaults are the reference code's (``src/config/config.yml``): ASAM, rho 0.1, eta
0.01, SACR threshold 0.95, temperature 1, unlabeled-loss weight 1, five local epochs,
unlabeled batch 32 (``client.batch_size`` 32 x ``client.uratio`` 1), lr 0.03.
Differences, and why:

- Each round iterates over the selected samples only, as the reference's default
  (``global_pseudo_lb = 2``) does: ``client.local_epochs`` passes over them, in
  unlabeled batches (:meth:`unlabeled_pool`), and gradients are clipped at norm 1
  (``client.max_grad_norm``), as the reference's ``Client.train``. Its labeled batch
  size 10 does not apply: the clients hold no labels here.
- A client whose status weight would be 0 (every sample predicted with probability
  exactly 1.0 in float32) reports 1e-6 instead, so a round's weights never sum to 0.
- ``client.fl2.status_momentum = m > 0`` (not the reference's, which re-estimates
  tau_g and p~ from scratch every round) blends the client's saved status into the
  new estimate, tau <- m * saved + (1 - m) * fresh. The status (tau_g, p~) is saved
  in the client's state store every round either way, so ``--resume`` continues
  exactly.
- Under a stock Flower server (no ``weighted_by_key``), updates are weighted by
  ``num-examples``, which this algorithm reports as 1: equal weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedssl.algorithms.base import (F, StepMetrics, Algorithm, Batch, Params, RoundContext, lazy, nn, param,
                                    register, torch)

semifl = lazy("fedssl.algorithms.semifl")
metrics_mod = lazy("fedssl.metrics")

MIN_STATUS_WEIGHT = 1e-6  # a round's aggregation weights never sum to zero


@dataclass(frozen=True)
class FL2Params(Params):
    sacr_threshold: float = param(0.95, "confidence a selected sample needs to enter the sharpness-aware "
                                  "consistency term", gt=0, le=1)
    rho: float = param(0.1, "radius of the adversarial weight perturbation", ge=0)
    eta: float = param(0.01, "ASAM: the operator |w| + eta on weight tensors", ge=0)
    sam: str = param("asam", "perturbation: asam (adaptive, the reference) or sam (plain)",
                     choices=("asam", "sam"))
    temperature: float = param(1.0, "temperature of the perturbed model's logits in the KL term", gt=0)
    lambda_u: float = param(1.0, "weight of the pseudo-label CE on the selected samples", ge=0)
    status_momentum: float = param(0.0, "blend of the saved learning status into the new one, m x saved + "
                                   "(1 - m) x fresh (0 = re-estimated every round, the reference)", ge=0, lt=1)


@register("fl2")
class FL2(Algorithm):
    params_class = FL2Params
    metric_keys = ("loss", "loss_x", "loss_u", "loss_sacr", "mask", "mask_sacr", "selected", "status", "status_weight",
                   "pl_acc")
    client_defaults = {"local_epochs": 5, "uratio": 1, "batch_size": 32, "lr": 0.03, "max_grad_norm": 1.0}
    equal_weight = True  # num-examples 1; the server weights by status_weight instead
    weight_key = "train_status_weight"
    unlabeled_views = ("strong",)
    _probs: torch.Tensor | None = None  # this round's global-model predictions on the shard
    _tau: torch.Tensor | None = None  # class-wise thresholds tau(k)
    _status: float = 0.0
    _selected: torch.Tensor | None = None  # shard positions above their class's threshold: the round's pool
    _selected_share: float = 0.0

    def begin_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> None:
        """Predict the shard with the received model; the client's thresholds from it."""
        self._probs = semifl.global_pseudo_probs(model, data.x_u, data.flip, ctx.device)
        status, class_conf = learning_status(self._probs)
        m = self.params.status_momentum
        if m > 0 and "status" in ctx.state:
            status = m * ctx.state["status"].to(status) + (1 - m) * status
            class_conf = m * ctx.state["class_confidence"].to(class_conf) + (1 - m) * class_conf
        ctx.state["status"], ctx.state["class_confidence"] = status.cpu(), class_conf.cpu()
        self._tau = class_thresholds(status, class_conf).to(ctx.device)
        self._status = float(status)
        conf, y_hat = self._probs.max(dim=1)
        self._selected = (conf >= self._tau[y_hat].to(conf.device)).nonzero().squeeze(1).cpu()
        self._selected_share = len(self._selected) / max(len(conf), 1)
        model.train()

    def unlabeled_pool(self) -> torch.Tensor | None:
        """The round's selected samples: the reference iterates over them only."""
        return self._selected

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        n_l = batch.y_l.numel()
        loss_x = self.supervised_ce(model(batch.x_l[0]), batch.y_l) if n_l else None
        out: StepMetrics = {"status": self._status,
                            "status_weight": max(1.0 - self._status, MIN_STATUS_WEIGHT)}
        zero = torch.stack([p.sum() for p in model.parameters()]).sum() * 0.0
        if not batch.x_u:
            out.update(loss_x=loss_x.detach() if loss_x is not None else 0.0, mask=0.0, mask_sacr=0.0)
            return loss_x if loss_x is not None else zero, out
        assert self._probs is not None and self._tau is not None and batch.idx_u is not None, "begin_round first"
        conf, y_hat = self._probs[batch.idx_u.to(self._probs.device)].max(dim=1)
        selected = conf >= self._tau[y_hat]
        confident = conf[selected] >= self.params.sacr_threshold
        # selected: the shard's selected share (the reference's LabelRatio); mask: the batch's, which is 1
        # when the batches come from the pool
        out.update(mask=selected.float().mean(), mask_sacr=confident.float().sum() / len(conf),
                   selected=self._selected_share)
        total = loss_x if loss_x is not None else zero
        out["loss_x"] = total.detach()
        if not selected.any():
            out.update(loss_u=0.0, loss_sacr=0.0)
            return total, out
        x, y = batch.x_u[0][selected], y_hat[selected]
        logits = model(x)
        loss_u = F.cross_entropy(logits, y)
        loss_sacr = sacr(model, x, logits, y, confident, self.params)
        out.update(loss_u=loss_u.detach(), loss_sacr=loss_sacr.detach())
        pl_acc = metrics_mod.pseudo_label_accuracy(y_hat, batch.y_u, selected)  # hidden labels: diagnostics
        if pl_acc is not None:
            out["pl_acc"] = pl_acc
        return total + self.params.lambda_u * loss_u + loss_sacr, out

    def end_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> dict:
        self._probs = self._tau = self._selected = None  # do not keep a client's predictions past its round
        return {}


def learning_status(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau_g, p~): the mean confidence [] and the mean probability per class [K] of
    predictions ``probs`` [N, K]; (0, uniform) for an empty shard."""
    if len(probs) == 0:
        k = probs.shape[1]
        return probs.new_zeros(()), probs.new_full((k,), 1.0 / max(k, 1))
    return probs.max(dim=1).values.mean(), probs.mean(dim=0)


def class_thresholds(status: torch.Tensor, class_conf: torch.Tensor) -> torch.Tensor:
    """tau(k) = tau_g * p~(k) / max_k' p~(k') [K]."""
    return status * class_conf / class_conf.max()


def perturbation(named: Sequence[tuple[str, torch.Tensor]], grads: Sequence[torch.Tensor | None], rho: float,
                 eta: float, adaptive: bool) -> list[torch.Tensor | None]:
    """(A)SAM's ascent step per parameter: rho * T^2 g / ||T g|| with T = |w| + eta on
    tensors whose name ends in ``weight`` (ASAM), T = 1 elsewhere and for plain SAM;
    None where a parameter had no gradient."""
    scaled = [None if g is None else (g * (p.detach().abs() + eta) if adaptive and n.endswith("weight") else g)
              for (n, p), g in zip(named, grads)]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled if s is not None]))
    out: list[torch.Tensor | None] = []
    for (n, p), s in zip(named, scaled):
        if s is not None and adaptive and n.endswith("weight"):
            s = s * (p.detach().abs() + eta)
        out.append(None if s is None else s * (rho / (norm + 1e-12)))
    return out


def sacr(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, confident: torch.Tensor,
         p: FL2Params) -> torch.Tensor:
    """L_sa on the selected batch ``x`` whose logits at w are ``logits``: the model is
    called with the weights w + eps (eps detached), so the gradient of the result with
    respect to w is grad L_sa at w + eps, SAM's step gradient. The module's own weights
    are never modified. Zero when no selected sample is confident."""
    if not confident.any():
        return logits.new_zeros(())
    named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(logits[confident], y[confident]), [q for _, q in named],
                                retain_graph=True, allow_unused=True)
    eps = perturbation(named, grads, p.rho, p.eta, p.sam == "asam")
    perturbed = {n: q if e is None else q + e for (n, q), e in zip(named, eps)}
    z_hat = torch.func.functional_call(model, perturbed, (x,))
    return sacr_kl(z_hat, logits.detach(), confident, p.temperature)


def sacr_kl(perturbed: torch.Tensor, target: torch.Tensor, confident: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """sum over the confident rows of KL(softmax(target) || softmax(perturbed / T)),
    divided by all the rows (the batch's selected samples)."""
    kl = F.kl_div(F.log_softmax(perturbed / temperature, dim=1), F.softmax(target, dim=1), reduction="none")
    return (kl.sum(dim=1) * confident.to(kl.dtype)).sum() / len(perturbed)
