"""The declaration of every config key: type, default, allowed values, range, help.

One line per key. Everything else is generated from these declarations: validation
(:mod:`fedssl.config.validate`), ``[tool.flwr.app.config]`` in ``pyproject.toml``, the
README's key table and the ``fedssl config`` listing (:mod:`fedssl.config.render`).

Adding a key is one line in its section's dataclass::

    new_key: float = key(0.5, "one-line help", ge=0, le=1)

then ``python -m fedssl.config --write`` regenerates pyproject.toml and the README table
(the drift tests in ``tests/test_config_schema.py`` fail until you do). A key whose check
needs other keys (e.g. a class count that depends on the dataset) adds a small function
to ``CROSS_CHECKS`` in :mod:`fedssl.config.validate`. A new section is a dataclass here
plus one entry in ``SECTIONS`` and one field of :class:`Config`.

This module imports no torch and no Flower: names of algorithms and strategies come
from the torch-free tables in :mod:`fedssl.registry`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedssl.registry import ALGORITHM_NAMES, STRATEGY_NAMES

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "cinic10", "synthetic")
PARTITIONS = ("iid", "dirichlet", "pathological", "openworld")
MODELS = ("cnn", "cnn_bn", "resnet18")
LR_SCHEDULES = ("cosine", "constant")
PSEUDO_LABEL_SLOTS = ("all", "unseen")
PSEUDO_LABEL_GUARDS = ("none", "agree", "keep_seen", "no_seen_swap", "prototype")
SLOT_MAPPINGS = ("hungarian", "slot_id")
SINKHORN_VARIANTS = ("reference", "log")
FEDOSSL_CLUSTERING = ("sgd", "kmeans")
FEDOSSL_INIT = ("random", "kmeans")
FEDOSSL_SEEN_SLOTS = ("centroid", "class_mean", "centroid_in_order")
SEMIFL_TEACHERS = ("global", "ema")
FEDOSSL_MEMORY = ("reembed", "forward")
FEDOSSL_GATES = ("run", "after_pretrain")
FEDOSSL_WEIGHTING = ("uniform", "examples")
FAULT_MODES = ("none", "crash", "hang", "nan", "shape", "scale")


def _no_spaces(value: str) -> str:
    return value.replace(" ", "")


def _strategy_name(value: str) -> str | None:
    """A registered name, or an import path checked when the server builds it."""
    if value in STRATEGY_NAMES or ":" in value:
        return None
    return f"unknown strategy {value!r} (choose from {', '.join(STRATEGY_NAMES)}, or give 'module:Class')"


def key(default: Any, help: str, *, choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        gt: float | None = None, ge: float | None = None, lt: float | None = None,
        le: float | None = None, each: bool = False, norm: Callable[[Any], Any] | None = None,
        check: Callable[[Any], str | None] | None = None, flwr: Any = None) -> Any:
    """Declare one key. ``choices``: allowed values (or a function returning them);
    ``each``: the value is a comma-separated list, each item in ``choices``;
    ``gt/ge/lt/le``: the numeric range; ``norm``: normalises the value once, at
    validation, so every reader sees the same form; ``check``: any other test of the value
    alone, returning an error text (or None when fine), e.g. an import path that must
    resolve; ``flwr``: a different default in ``[tool.flwr.app.config]``."""
    meta = {"help": help, "choices": choices, "gt": gt, "ge": ge, "lt": lt, "le": le,
            "each": each, "norm": norm, "check": check, "flwr": flwr}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = key("fashion-mnist", "dataset to learn", choices=DATASETS)
    root: str = key("", "dataset directory; empty = the dataset's default location")
    partition: str = key("dirichlet", "how labels are split over clients", choices=PARTITIONS)
    alpha: float = key(0.5, "Dirichlet concentration (smaller = more label skew)", gt=0)
    classes_per_client: int = key(2, "classes per client under partition=pathological", ge=1)
    num_clients: int = key(20, "number of clients (partitions)", ge=1)
    labeled_ratio: float = key(0.05, "fraction of each client's samples that keep their label "
                               "(0 only with server_labels_per_class > 0)", ge=0, le=1)
    seen_classes: int = key(0, "classes that have labels; 0 = all (closed world)", ge=0)
    globally_unseen: int = key(0, "partition=openworld: unseen classes that live on one client only", ge=0)
    max_train_samples: int = key(0, "class-stratified train subset; 0 = whole train split", ge=0)
    max_test_samples: int = key(0, "test subset; 0 = whole test split", ge=0)
    server_labels_per_class: int = key(0, "labeled train samples per class held by the server, removed "
                                       "from the clients' pool; 0 = off", ge=0)


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = key(20, "federated rounds", ge=1)
    fraction_train: float = key(1.0, "fraction of clients sampled per round", gt=0, le=1)
    min_clients: int = key(2, "minimum clients per round", ge=1)
    num_cpus: float = key(1.0, "CPUs per virtual client (Ray)", gt=0)
    num_gpus: float = key(0.0, "GPUs per virtual client (Ray), fractional", ge=0)
    clients_per_node: int = key(0, "virtual clients packed per Ray actor; 0 = auto", ge=0)
    ray_address: str = key("", "Ray cluster to join; empty = start a local one")
    round_timeout: float = key(600.0, "seconds to wait for replies in one round", gt=0)


@dataclass(frozen=True)
class ClientConfig:
    algorithm: str = key("fixmatch", "local SSL objective", choices=lambda: tuple(ALGORITHM_NAMES))
    local_epochs: int = key(2, "local epochs per round (over the labeled set)", ge=0)
    local_steps: int = key(0, "fixed local steps per round; overrides epochs when > 0", ge=0)
    batch_size: int = key(32, "labeled batch size", ge=2)
    lr: float = key(0.03, "client learning rate", gt=0)
    lr_schedule: str = key("cosine", "cosine (over rounds) or constant", choices=LR_SCHEDULES)
    momentum: float = key(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = key(5e-4, "SGD weight decay", ge=0)
    uratio: int = key(4, "unlabeled batch = uratio x labeled batch (FixMatch's mu)", ge=1)
    lambda_u: float = key(1.0, "weight of the unlabeled loss", ge=0)
    threshold: float = key(0.95, "pseudo-label confidence threshold", gt=0, le=1)
    temperature: float = key(0.4, "UDA sharpening temperature", gt=0)
    ema_decay: float = key(0.99, "EMA teacher decay per local step", ge=0, lt=1)
    teacher_sync: float = key(0.5, "teacher <- s^gap * teacher + (1 - s^gap) * global", ge=0, le=1)
    rampup_rounds: int = key(5, "Mean Teacher consistency ramp-up, in rounds", ge=0)
    proximal_mu: float = key(0.0, "FedProx proximal term (set by the fedprox strategy)", ge=0)
    warmup_rounds: int = key(0, "FedoSSL: cluster loss from this round on; 0 = server.fedossl_cluster_start",
                             ge=0)
    pseudo_label_round: int = key(0, "FedoSSL: centroid pseudo-labels from this round on; "
                                  "0 = server.fedossl_pseudo_label_start", ge=0)
    pseudo_label_slots: str = key("all", "FedoSSL: pseudo-label all centroids (reference) or unseen only",
                                  choices=PSEUDO_LABEL_SLOTS)
    suppress_beta: float = key(0.2, "FedoSSL: suppression margin beta", ge=0)
    lambda_suppress: float = key(1.0, "FedoSSL: weight of L_sup (carries the reference's 1/K)", ge=0)
    cluster_temperature: float = key(0.1, "FedoSSL: temperature of the cluster softmax", gt=0)
    local_centroids: int = key(20, "FedoSSL: local k-means centroids per client", ge=1)
    memory_size: int = key(1024, "FedoSSL: feature memory per client", ge=1)
    memory: str = key("reembed", "FedoSSL local clustering input: reembed = up to memory_size unlabeled "
                      "samples embedded after training; forward = the last memory_size features of the "
                      "round's training passes, both views (the reference)", choices=FEDOSSL_MEMORY)
    pretrain_rounds: int = key(1, "ORCA / FedoSSL: plain labeled CE rounds first", ge=0)
    # FedoSSL, issue 16 (docs/openworld.md): defaults follow cugzj/FedoSSL
    sinkhorn: str = key("reference", "FedoSSL Sinkhorn: reference (softmax first) or log (former)",
                        choices=SINKHORN_VARIANTS)
    sinkhorn_epsilon: float = key(0.04, "FedoSSL Sinkhorn epsilon (reference 1/25; former 0.05)", gt=0)
    pseudo_label_guard: str = key("prototype", "FedoSSL: none (reference); agree: pseudo-label only "
                                  "where the classifier already predicts that class; keep_seen: only "
                                  "where it agrees or predicts an unseen class; no_seen_swap: never from "
                                  "one seen class to another; prototype (default): that, and out of a seen "
                                  "class only if nearer the slot than the class's labeled mean",
                                  choices=PSEUDO_LABEL_GUARDS)
    slot_mapping: str = key("hungarian", "FedoSSL: an unseen slot's pseudo-label, the head output matched "
                            "to its centroid (hungarian) or the slot id itself (slot_id, the reference)",
                            choices=SLOT_MAPPINGS)
    mix_alpha: float = key(0.75, "SemiFL: mixup lambda ~ Beta(mix_alpha, mix_alpha)", gt=0)
    semifl_teacher: str = key("global", "SemiFL: the round's fixed pseudo-labels come from the received "
                              "global model (global, the paper) or the client's persistent EMA teacher "
                              "(ema, met with the global model by client.teacher_sync)",
                              choices=SEMIFL_TEACHERS)
    logit_adjustment: float = key(0.0, "SemiFL: add tau x log(local pseudo-label prior) to the logits of "
                                  "the unlabeled terms (FedLC-style balanced loss against label skew; "
                                  "0 = off, the paper)", ge=0)
    selective_fraction: float = key(0.5, "FedSTO: fraction of rounds in the selective (backbone-only) phase",
                                    ge=0, le=1)
    ortho_lambda: float = key(0.01, "FedSTO: weight of the SRIP orthogonality penalty on the head (phase 2)",
                              ge=0)


@dataclass(frozen=True)
class ServerConfig:
    strategy: str = key("fedavg", "aggregation strategy: a Flower strategy's lower-case name, fedossl, "
                        "or 'module:Class'", check=_strategy_name)
    params: str = key("", "the strategy class's constructor arguments: 'name = value, ...' (TOML values)")
    proximal_mu: float = key(0.01, "fedprox: proximal term sent to clients", ge=0)
    server_lr: float = key(1.0, "fedavgm: server learning rate", gt=0)
    server_momentum: float = key(0.9, "fedavgm: server momentum", ge=0, lt=1)
    eta: float = key(0.01, "fedadam / fedyogi: server learning rate", gt=0)
    beta_1: float = key(0.9, "fedadam / fedyogi: first-moment decay", ge=0, lt=1)
    beta_2: float = key(0.99, "fedadam / fedyogi: second-moment decay", ge=0, lt=1)
    tau: float = key(1e-3, "fedadam / fedyogi: adaptivity epsilon", gt=0)
    max_update_norm: float = key(0.0, "reject updates with a larger L2 norm; 0 = no bound", ge=0)
    divergence_factor: float = key(10.0, "stop when loss > factor x best loss", gt=1)
    # FedoSSL server, issue 16 (docs/openworld.md): defaults follow cugzj/FedoSSL
    fedossl_clustering: str = key("sgd", "fedossl: sgd = persistent centroids refined by SGD (reference); "
                                  "kmeans = balanced k-means re-fitted each round (former)",
                                  choices=FEDOSSL_CLUSTERING)
    fedossl_init: str = key("random", "fedossl (sgd): start of the persistent centroids, random (reference) "
                            "or kmeans = balanced k-means of the first round's local centroids",
                            choices=FEDOSSL_INIT)
    fedossl_seen_slots: str = key("centroid", "fedossl: seen class c's slot, the centroid calibrated to it "
                                  "(greedy over all pairs); centroid_in_order = the reference's calibration "
                                  "(classes in order); class_mean = its labeled mean", choices=FEDOSSL_SEEN_SLOTS)
    fedossl_sgd_steps: int = key(500, "fedossl: SGD steps on the global centroids per round", ge=0)
    fedossl_weighting: str = key("uniform", "fedossl: FedAvg weights, uniform (reference) or examples",
                                 choices=FEDOSSL_WEIGHTING)
    fedossl_gates: str = key("after_pretrain", "fedossl: the start fractions count the rounds after "
                             "client.pretrain_rounds, or run = the whole run (before issue 16's grid)",
                             choices=FEDOSSL_GATES)
    fedossl_cluster_start: float = key(0.125, "fedossl: cluster loss once this fraction of rounds is done "
                                       "(reference 5/40)", ge=0, le=1)
    fedossl_pseudo_label_start: float = key(0.175, "fedossl: centroid pseudo-labels once this fraction "
                                            "is done (reference 7/40)", ge=0, le=1)
    fedossl_rampup: int = key(3, "fedossl: rounds over which the cluster and pseudo-label terms ramp in after "
                              "their gates (sigmoid ramp-up); 0 = switched on at full weight (reference)", ge=0)
    train_steps: int = key(50, "labels at server: SGD steps on the server's labels after each aggregation", ge=0)
    warmup_steps: int = key(500, "labels at server: SGD steps on the server's labels before round 1", ge=0)
    train_lr: float = key(0.03, "labels at server: server learning rate (follows client.lr_schedule)", gt=0)
    train_batch_size: int = key(32, "labels at server: server batch size", ge=2)


@dataclass(frozen=True)
class ModelConfig:
    name: str = key("cnn", "network", choices=MODELS)


@dataclass(frozen=True)
class RunConfig:
    seed: int = key(0, "seed of everything (partition, init, sampling)")
    eval_every: int = key(1, "evaluate every N rounds (the last round always)", ge=1)
    checkpoint_every: int = key(1, "checkpoint every N rounds; 0 = never", ge=0)
    out_dir: str = key("runs/default", "output directory (--out sets it)", flwr="runs/flwr")


@dataclass(frozen=True)
class FaultsConfig:
    mode: str = key("none", "fault to inject, or one per client: \"crash,nan\"",
                    choices=FAULT_MODES, each=True, norm=_no_spaces)
    clients: str = key("", "comma-separated partition ids that misbehave, e.g. \"0,3\"", norm=_no_spaces)
    rate: float = key(1.0, "probability of a fault per (round, client)", ge=0, le=1)
    scale: float = key(100.0, "mode=scale: update multiplier")
    seed: int = key(0, "seed of the fault draws")
    start_round: int = key(1, "faults begin in this round", ge=1)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "federation": FederationConfig,
    "client": ClientConfig,
    "server": ServerConfig,
    "model": ModelConfig,
    "run": RunConfig,
    "faults": FaultsConfig,
}


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)

    def to_flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every key (Flower run config form)."""
        return {f"{s}.{k}": v for s in SECTIONS for k, v in dataclasses.asdict(getattr(self, s)).items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def replace(self, **flat: Any) -> Config:
        """A copy with dotted keys overridden (validated)."""
        from fedssl.config.validate import from_flat

        return from_flat({**self.to_flat(), **flat})

    @property
    def num_classes(self) -> int:
        return num_classes_of(self.data.dataset)

    @property
    def num_seen(self) -> int:
        return self.data.seen_classes or self.num_classes


def num_classes_of(dataset: str) -> int:
    return {"cifar100": 100}.get(dataset, 10)


@dataclass(frozen=True)
class Key:
    """One declared key, as the generators see it."""

    name: str  # dotted: "data.alpha"
    type: type
    default: Any
    help: str
    meta: dict[str, Any]

    @property
    def choices(self) -> tuple[str, ...] | None:
        c = self.meta["choices"]
        return tuple(c() if callable(c) else c) if c is not None else None

    @property
    def flwr_default(self) -> Any:
        return self.default if self.meta["flwr"] is None else self.meta["flwr"]

    def range_text(self) -> str:
        """``"> 0"``, ``"in (0, 1]"`` ... or "" when unbounded."""
        m = self.meta
        lo = (f"({m['gt']}" if m["gt"] is not None else f"[{m['ge']}" if m["ge"] is not None else None)
        hi = (f"{m['lt']})" if m["lt"] is not None else f"{m['le']}]" if m["le"] is not None else None)
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return ("> " if lo[0] == "(" else ">= ") + lo[1:]
        if hi:
            return ("< " if hi[-1] == ")" else "<= ") + hi[:-1]
        return ""


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def keys() -> dict[str, Key]:
    """Every declared key by dotted name, in declaration order."""
    return {f"{s}.{f.name}": Key(f"{s}.{f.name}", _TYPES[str(f.type)], f.default, f.metadata["help"],
                                 dict(f.metadata))
            for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
