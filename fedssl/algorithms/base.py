"""The contract between the shared local trainer and one SSL algorithm, and the
declaration API of an algorithm.

An algorithm is one file that declares everything about it: its name
(:func:`register`), its own parameters (a :class:`Params` dataclass of :func:`param`
fields, the keys of its ``[client.<name>]`` config section), its metric keys, whether
it is open-world, the shared ``[client]`` defaults it overrides, and its optional
server-side hooks. It says which augmented views it needs and computes one step's
loss from a :class:`Batch`. Everything else (data sampling, augmentation, the
optimiser, the EMA teacher, FedProx's proximal term, persistent client state) is
shared machinery in :mod:`fedssl.training`.

Importing an algorithm file imports no torch, so a config validates in
milliseconds: ``torch``, ``F`` (``torch.nn.functional``) and ``nn`` here are
:class:`LazyModule` proxies that import on first attribute access; use them inside
methods, and ``from __future__ import annotations`` for type hints.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from fedssl.config.keys import Params, param

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    from fedssl.config import ClientConfig


class LazyModule(types.ModuleType):
    """A module imported on first attribute access (then cached attribute by attribute)."""

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self.__name__), attr)
        setattr(self, attr, value)
        return value


def lazy(module: str) -> Any:
    """A :class:`LazyModule` for ``module``, e.g. ``augment = lazy("fedssl.data.augment")``."""
    return LazyModule(module)


if not TYPE_CHECKING:
    torch, F, nn, np = lazy("torch"), lazy("torch.nn.functional"), lazy("torch.nn"), lazy("numpy")


@dataclass(frozen=True)
class PseudoLabelParams(Params):
    """The two knobs of a confidence-thresholded pseudo-label loss, at FixMatch's values;
    an algorithm of that family subclasses it with its own keys."""

    threshold: float = param(0.95, "pseudo-label confidence threshold tau", gt=0, le=1)
    lambda_u: float = param(1.0, "weight of the unlabeled loss", ge=0)


def register(name: str) -> Any:
    """``@register("name")``: the class is the built-in algorithm ``name``. The registry
    (:data:`fedssl.registry.ALGORITHMS`) finds it when it imports this package's
    modules, so an algorithm file does not import the registry."""

    def deco(cls: Any) -> Any:
        cls.name = name
        return cls

    return deco


def train_head(model: nn.Module, on: bool) -> None:
    """Let the classifier head train (``on``) or keep it as received: SGD skips
    parameters without a gradient. The runtime reuses one model for many clients, so an
    algorithm that freezes it in ``begin_round`` sets it back in ``end_round``."""
    for p in model.get_submodule("head").parameters():
        p.requires_grad_(on)


__all__ = ["Algorithm", "Batch", "F", "LazyModule", "Params", "PseudoLabelParams", "RoundContext", "StepMetrics", "lazy", "nn", "np",
           "param", "register", "torch", "train_head"]


#: per-step metrics: detached 0-d tensors (summed on the device, read once per
#: round) or plain floats
StepMetrics = dict[str, Any]


@dataclass
class Batch:
    """One step's data. Views are float tensors [B, C, H, W], normalised.

    ``x_l[i]`` is the i-th requested view of the labeled batch (``labeled_views``),
    ``x_u[i]`` the i-th view of the unlabeled batch (``unlabeled_views``).
    ``y_l`` holds labels [B]; ``y_u`` the hidden true labels of the unlabeled batch,
    for diagnostics only (mask precision), never for a loss.
    """

    x_l: list[torch.Tensor]
    y_l: torch.Tensor
    x_u: list[torch.Tensor]
    y_u: torch.Tensor | None = None
    idx_u: torch.Tensor | None = None  # positions of the unlabeled batch in the client's shard


@dataclass
class RoundContext:
    """What an algorithm may read during one client's local round."""

    server_round: int
    step: int = 0
    total_steps: int = 1
    teacher: nn.Module | None = None  # persistent per-client EMA teacher (eval mode)
    payload: dict[str, np.ndarray] = field(default_factory=dict)  # from the server
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # persisted per client
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    stage: int = 0  # incremental runs ([stream]): the current stage, 0-based
    prev_model: nn.Module | None = None  # [stream]: the previous stage's global model (frozen), from stage 1


class Algorithm:
    """Base class. Subclasses set the class attributes and implement :meth:`loss`.

    ``self.cfg`` is the shared ``[client]`` section, ``self.params`` the algorithm's
    own (an instance of ``params_class``), ``self.rounds`` the run's federated rounds.
    """

    name: ClassVar[str] = ""  # set by @register; a user's class: its [client.<name>] section
    params_class: ClassVar[type[Params]] = Params  # its own keys, [client.<name>]
    metric_keys: ClassVar[tuple[str, ...]] = ("loss",)  # train_* metrics every reply carries
    client_defaults: ClassVar[Mapping[str, Any]] = {}  # its defaults of shared [client] keys
    open_world: bool = False  # needs unseen classes and a cosine head
    uses_teacher: bool = False  # the trainer keeps an EMA teacher for this client
    uses_unlabeled: bool = True
    pairs_with: str | None = None  # the server strategy that sends this algorithm's payload
    equal_weight: bool = False  # aggregate with equal client weights (reports num-examples 1)
    #: a client that ran no step (nothing to learn from, e.g. no confident pseudo-label)
    #: is left out of the round's average instead of averaging its untouched model in
    leave_out_idle: bool = False
    #: the reply metric the server's strategy weights this algorithm's updates by (Flower's
    #: ``weighted_by_key``): ``num-examples``, or a ``train_*`` metric the algorithm emits
    weight_key: ClassVar[str] = "num-examples"
    labeled_views: tuple[str, ...] = ("weak",)
    unlabeled_views: tuple[str, ...] = ("weak", "strong")
    # incremental runs ([stream]): what the client runtime keeps across stages for it
    replay: str = "none"  # raw samples of past stages: none | reservoir (<= stream.buffer) | all (unbounded)
    uses_prev_model: bool = False  # the previous stage's global model, as ctx.prev_model

    def __init__(self, cfg: ClientConfig, num_classes: int, num_seen: int, params: Params | None = None,
                 rounds: int = 1) -> None:
        self.cfg = cfg
        self.params: Any = self.params_class() if params is None else params
        self.num_classes = num_classes
        self.num_seen = num_seen
        self.rounds = rounds

    # -- server-side hooks (no-ops unless an algorithm overrides them) ----------
    def server_penalty(self, model: nn.Module, server_round: int) -> torch.Tensor | None:
        """A term the server adds to its own training loss (labels at server) after
        aggregating ``server_round`` (0: the warm-up before round 1); None = nothing."""
        return None

    def begin_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> None:
        """Hook before the first step (e.g. ORCA's margin, FedoSSL's centroids)."""

    def unlabeled_pool(self) -> torch.Tensor | None:
        """The positions in the client's shard that this round's unlabeled batches are
        drawn from, chosen in :meth:`begin_round` (e.g. SemiFL's confident subset); its
        size also sets the round's steps under ``client.local_epochs``. None: the whole shard."""
        return None

    def epoch_steps(self, steps: int) -> int:
        """This round's steps under ``client.local_epochs`` (``steps``: the epochs' count;
        not called when ``client.local_steps`` fixes them)."""
        return steps

    def loss(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, StepMetrics]:
        """Return (scalar loss, metrics for logging). A metric may be a float or a
        detached 0-dim tensor: the trainer sums tensors on the device and reads them
        once per round, so returning tensors avoids a device sync per step."""
        raise NotImplementedError

    def end_round(self, model: nn.Module, ctx: RoundContext, data: Any) -> dict[str, np.ndarray]:
        """Hook after the last step; returns the payload sent back to the server."""
        return {}

    # -- shared helpers -------------------------------------------------------
    @staticmethod
    def supervised_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy; zero (with grad) when the client has no labels."""
        if y.numel() == 0:
            return logits.sum() * 0.0
        return F.cross_entropy(logits, y)

    def supervised_only(self, model: nn.Module, batch: Batch, **unlabeled: float) -> tuple[torch.Tensor, StepMetrics]:
        """The step of a client without unlabeled data: cross-entropy on the labeled
        batch; ``unlabeled`` gives the unlabeled terms' metrics (e.g. ``loss_u=0.0``)."""
        loss_x = self.supervised_ce(model(batch.x_l[0]), batch.y_l)
        return loss_x, {"loss_x": loss_x.detach(), **unlabeled}

    def pseudo_probs(self, model: nn.Module, x: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        """Target probabilities on the weak view: from the EMA teacher when the
        algorithm keeps one, else from the student without gradient."""
        net = ctx.teacher if (self.uses_teacher and ctx.teacher is not None) else model
        with torch.no_grad():
            return torch.softmax(net(x), dim=1)

    def weak_strong(self, model: nn.Module, batch: Batch, ctx: RoundContext) -> tuple[torch.Tensor, torch.Tensor]:
        """FixMatch's pair on the unlabeled batch: (target probabilities q on the weak
        view, :meth:`pseudo_probs`; the strong view, which the student learns q on)."""
        u_weak, u_strong = batch.x_u
        return self.pseudo_probs(model, u_weak, ctx), u_strong
