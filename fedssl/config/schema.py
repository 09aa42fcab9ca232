"""The declaration of every config key: type, default, allowed values, range, help.

One line per key. Everything else is generated from these declarations: validation
(:mod:`fedssl.config.validate`), ``[tool.flwr.app.config]`` in ``pyproject.toml``, the
README's key table and the ``fedssl config`` listing (:mod:`fedssl.config.render`).

Adding a key is one line in its section's dataclass::

    new_key: float = key(0.5, "one-line help", ge=0, le=1)

then ``python -m fedssl.config --write`` regenerates pyproject.toml and the README table
(the drift tests in ``tests/test_config_schema.py`` fail until you do). A key whose check
needs other keys (e.g. a class count that depends on the dataset) adds a small function
to ``CROSS_CHECKS`` in :mod:`fedssl.config.experiment`. A new section is a dataclass here
plus one entry in ``SECTIONS`` and one field of :class:`fedssl.config.experiment.Config`.

This module imports no torch and no Flower: names of algorithms and strategies come
from the torch-free tables in :mod:`fedssl.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from dataclasses import dataclass

from fedssl.config.keys import Key, algorithm_keys, fields_of, key
from fedssl.plugins import PluginError, is_import_path, load_callable, load_dataset
from fedssl.registry import ALGORITHMS, STRATEGY_NAMES

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "cinic10", "synthetic")
PARTITIONS = ("iid", "dirichlet", "pathological", "openworld")
MODELS = ("cnn", "cnn_bn", "resnet18")
LR_SCHEDULES = ("cosine", "constant")
FEDOSSL_CLUSTERING = ("sgd", "kmeans")
FEDOSSL_INIT = ("random", "kmeans")
FEDOSSL_SEEN_SLOTS = ("centroid", "class_mean", "centroid_in_order")
FEDOSSL_GATES = ("run", "after_pretrain")
FEDOSSL_WEIGHTING = ("uniform", "examples")
BN_STATS = ("server", "server_clients")
FAULT_MODES = ("none", "crash", "hang", "nan", "shape", "scale")


def _no_spaces(value: str) -> str:
    return value.replace(" ", "")


def _strategy_name(value: str) -> str | None:
    """A registered name, or an import path checked when the server builds it."""
    if value in STRATEGY_NAMES or ":" in value:
        return None
    return f"unknown strategy {value!r} (choose from {', '.join(STRATEGY_NAMES)}, or give 'module:Class')"


def _plugin_check(load: Callable[[str], Any]) -> Callable[[str], str | None]:
    """A key check: a user's import path must pass ``load`` (its PluginError is the
    error text); a built-in name passes."""

    def check(value: str) -> str | None:
        try:
            if is_import_path(value):
                load(value)
        except PluginError as e:
            return str(e)
        return None

    return check


#: a user's dataset function must load and return well-formed arrays
_dataset_plugin = _plugin_check(load_dataset)
#: a user's model function must import and be callable (its model is checked when built)
_model_plugin = _plugin_check(load_callable)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = key("fashion-mnist", "dataset to learn: a built-in name, or 'module:function' returning "
                       "(train_x, train_y, test_x, test_y, class_names) as numpy arrays", choices=DATASETS,
                       plugin="function", check=_dataset_plugin)
    root: str = key("", "dataset directory; empty = the dataset's default location")
    partition: str = key("dirichlet", f"how samples are split over clients: {' | '.join(PARTITIONS)} | 'flwr:<Class>'")
    partition_params: str = key("", "flwr:<Class>'s arguments: 'name = value, ...' (TOML values)")
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
    algorithm: str = key("fixmatch", "local SSL objective; its own keys are in [client.<algorithm>]",
                         choices=lambda: tuple(ALGORITHMS), plugin="Class")
    local_epochs: int = key(2, "local epochs per round: passes over the unlabeled data an SSL algorithm draws "
                            "from (in unlabeled batches), over the labeled set otherwise", ge=0)
    local_steps: int = key(0, "fixed local steps per round; overrides epochs when > 0", ge=0)
    batch_size: int = key(32, "labeled batch size", ge=2)
    lr: float = key(0.03, "client learning rate", gt=0)
    lr_schedule: str = key("cosine", "cosine (over rounds) or constant", choices=LR_SCHEDULES)
    momentum: float = key(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = key(5e-4, "SGD weight decay", ge=0)
    max_grad_norm: float = key(0.0, "clip each local step's gradient at this L2 norm (0 = off)", ge=0)
    uratio: int = key(4, "unlabeled batch = uratio x labeled batch (FixMatch's mu)", ge=1)
    ema_decay: float = key(0.99, "EMA teacher decay per local step", ge=0, lt=1)
    teacher_sync: float = key(0.5, "teacher <- s^gap * teacher + (1 - s^gap) * global", ge=0, le=1)
    proximal_mu: float = key(0.0, "FedProx proximal term (set by the fedprox strategy)", ge=0)


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
    # FedoSSL server (docs/openworld.md): defaults follow cugzj/FedoSSL
    fedossl_clustering: str = key("sgd", "fedossl: sgd = persistent centroids refined by SGD (reference); "
                                  "kmeans = balanced k-means re-fitted each round",
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
                             "client.fedossl.pretrain_rounds, or run = the whole run",
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
    bn_stats: str = key("server", "labels at server, model with batch norm: the global model's BN statistics "
                        "after the server step come from the server's labeled set (server), or from it and "
                        "every client's shard through a statistics query (server_clients, SemiFL's sbn = 1)",
                        choices=BN_STATS)


@dataclass(frozen=True)
class ModelConfig:
    name: str = key("cnn", "network: a built-in name, or 'module:function' called as f(num_classes=, "
                    "in_channels=, image_size=, cosine_head=) returning a torch.nn.Module with features() "
                    "and head", choices=MODELS, plugin="function", check=_model_plugin)


@dataclass(frozen=True)
class RunConfig:
    seed: int = key(0, "seed of everything (partition, init, sampling)")
    eval_every: int = key(1, "evaluate every N rounds (the last round always)", ge=1)
    checkpoint_every: int = key(1, "checkpoint every N rounds; 0 = never", ge=0)
    out_dir: str = key("runs/default", "output directory (--out sets it)", flwr="runs/flwr")
    tracking: str = key("", "experiment trackers fed every round's metrics, a list; empty = off",
                        choices=("tensorboard", "mlflow"), each=True)


@dataclass(frozen=True)
class FaultsConfig:
    mode: str = key("none", "fault to inject, or one per client: \"crash,nan\"",
                    choices=FAULT_MODES, each=True, norm=_no_spaces)
    clients: str = key("", "comma-separated partition ids that misbehave, e.g. \"0,3\"", norm=_no_spaces)
    rate: float = key(1.0, "probability of a fault per (round, client)", ge=0, le=1)
    scale: float = key(100.0, "mode=scale: update multiplier")
    seed: int = key(0, "seed of the fault draws")
    start_round: int = key(1, "faults begin in this round", ge=1)


@dataclass(frozen=True)
class StreamConfig:
    stages: int = key(0, "incremental stages T (each a new domain and new client samples); 0 = off", ge=0)
    rounds_per_stage: int = key(10, "rounds per stage; federation.rounds must be stages x this", ge=1)
    domains: str = key("rotate,gaussian_noise,contrast,gaussian_blur,inverse", "domain of each stage, in "
                       "order (Fashion-MNIST-C corruptions; at least stages of them)", each=True, norm=_no_spaces,
                       choices=("rotate", "contrast", "gaussian_noise", "gaussian_blur", "inverse", "identity"))
    severities: str = key("", "severity 1..5 per domain (one value: all); empty = the reference's", norm=_no_spaces)
    buffer: int = key(100, "replay buffer bound, samples per client (enforced by the client runtime)", ge=0)


SECTIONS: dict[str, type] = {
    "data": DataConfig, "federation": FederationConfig, "client": ClientConfig, "server": ServerConfig,
    "model": ModelConfig, "run": RunConfig, "faults": FaultsConfig, "stream": StreamConfig,
}


def num_classes_of(dataset: str) -> int:
    """Classes of a dataset (a user's: the length of its class_names)."""
    if is_import_path(dataset):
        return len(load_dataset(dataset)[4])
    return {"cifar100": 100}.get(dataset, 10)


def shared_keys() -> dict[str, Key]:
    """The keys of the sections every run has (``[data]``, ``[client]`` ...)."""
    return {n: k for s, cls in SECTIONS.items() for n, k in fields_of(s, cls).items()}


def keys() -> dict[str, Key]:
    """Every declared key by dotted name, in declaration order: the shared sections,
    then each built-in algorithm's own section."""
    out = shared_keys()
    for name in ALGORITHMS:
        out.update(algorithm_keys(ALGORITHMS[name]))
    return out
