"""Typed experiment configuration, validated once at the edge.

A config is a set of TOML sections (``[data]``, ``[federation]`` ...) whose keys are
declared below with their type and default. Every entry point (``fedssl run``, the
Flower apps' run config, ``fedssl bench`` grid cells) goes through :func:`resolve`, so
the core never re-checks inputs. Errors raise :class:`ConfigError` with a one-line
message naming the key and the bad value.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w


class ConfigError(ValueError):
    """Bad user input: the message is one line that names the key/file and value."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"
    root: str = ""  # "" = the dataset's default location (Debian path, ~/.cache/fedssl)
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = 2
    num_clients: int = 20
    labeled_ratio: float = 0.05
    seen_classes: int = 0  # 0 = all classes seen (closed world)
    globally_unseen: int = 0
    max_train_samples: int = 0  # 0 = whole train split; >0 = class-stratified subset
    max_test_samples: int = 0  # 0 = whole test split


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = 20
    fraction_train: float = 1.0
    min_clients: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    clients_per_node: int = 0  # 0 = auto (chosen by benchmarks/sim_overhead.py)
    ray_address: str = ""
    round_timeout: float = 600.0


@dataclass(frozen=True)
class ClientConfig:
    algorithm: str = "fixmatch"
    local_epochs: int = 2
    local_steps: int = 0  # fixed steps per round; overrides epochs when > 0
    batch_size: int = 32
    lr: float = 0.03
    lr_schedule: str = "cosine"  # cosine (over rounds) | constant
    momentum: float = 0.9
    weight_decay: float = 5e-4
    uratio: int = 4  # unlabeled batch = uratio x labeled batch (FixMatch's mu)
    lambda_u: float = 1.0
    threshold: float = 0.95
    temperature: float = 0.4  # UDA sharpening
    ema_decay: float = 0.99
    teacher_sync: float = 0.5  # teacher <- s^gap * teacher + (1 - s^gap) * global
    rampup_rounds: int = 5  # Mean Teacher consistency ramp-up
    proximal_mu: float = 0.0  # FedProx; set by the fedprox strategy
    # Open world (ORCA / FedoSSL)
    warmup_rounds: int = 2  # FedoSSL: cluster loss from this round on
    pseudo_label_round: int = 4  # FedoSSL: centroid pseudo-labels from this round on
    pseudo_label_slots: str = "all"  # FedoSSL: all centroids (reference) | unseen
    suppress_beta: float = 0.2
    lambda_suppress: float = 1.0  # weight of L_sup, which carries the reference's 1/K
    cluster_temperature: float = 0.1
    local_centroids: int = 20
    memory_size: int = 1024
    pretrain_rounds: int = 1  # ORCA / FedoSSL: plain labeled CE first (no pretrained backbone)


@dataclass(frozen=True)
class ServerConfig:
    strategy: str = "fedavg"
    proximal_mu: float = 0.01  # fedprox
    server_lr: float = 1.0  # fedavgm
    server_momentum: float = 0.9  # fedavgm
    eta: float = 0.01  # fedadam / fedyogi
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    max_update_norm: float = 0.0  # 0 = no bound on ||update||
    divergence_factor: float = 10.0  # stop when loss > factor x best loss


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn"


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    eval_every: int = 1
    checkpoint_every: int = 1
    out_dir: str = "runs/default"


@dataclass(frozen=True)
class FaultsConfig:
    mode: str = "none"  # none | crash | hang | nan | shape | scale, or one per client: "crash,nan"
    clients: str = ""  # comma-separated partition ids, e.g. "0,3"
    rate: float = 1.0  # probability per (round, client), deterministic from seed
    scale: float = 100.0
    seed: int = 0
    start_round: int = 1  # faults begin in this round (a client that turns bad mid-run)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "federation": FederationConfig,
    "client": ClientConfig,
    "server": ServerConfig,
    "model": ModelConfig,
    "run": RunConfig,
    "faults": FaultsConfig,
}

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "cinic10", "synthetic")
PARTITIONS = ("iid", "dirichlet", "pathological", "openworld")
MODELS = ("cnn", "resnet18")
LR_SCHEDULES = ("cosine", "constant")
PSEUDO_LABEL_SLOTS = ("all", "unseen")
FAULT_MODES = ("none", "crash", "hang", "nan", "shape", "scale")


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
        return {
            f"{s}.{f.name}": getattr(getattr(self, s), f.name)
            for s in SECTIONS
            for f in fields(SECTIONS[s])
        }

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def replace(self, **flat: Any) -> Config:
        """A copy with dotted keys overridden (validated)."""
        merged = self.to_flat()
        merged.update(flat)
        return from_flat(merged)

    @property
    def num_classes(self) -> int:
        return num_classes_of(self.data.dataset)

    @property
    def num_seen(self) -> int:
        return self.data.seen_classes or self.num_classes


def num_classes_of(dataset: str) -> int:
    return {"cifar100": 100}.get(dataset, 10)


def _coerce(key: str, value: Any, typ: type, source: str) -> Any:
    where = f" in {source}" if source else ""
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError
                return text.lower() == "true"
            value = tomllib.loads(f"v = {text}")["v"]
        except (ValueError, tomllib.TOMLDecodeError):
            raise ConfigError(
                f"{key}{where}: expected {typ.__name__}, got {value!r}"
            ) from None
    if typ is str and isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"{key}{where}: badly quoted string {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(
            f"{key}{where}: expected {typ.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )
    return value


def from_flat(flat: dict[str, Any], source: str = "") -> Config:
    """Build a validated Config from dotted keys; unknown keys are errors."""
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        cls = SECTIONS.get(section)
        known = {f.name: f for f in fields(cls)} if cls else {}
        if name not in known:
            where = f" in {source}" if source else ""
            raise ConfigError(f"unknown config key {key!r}{where}{_suggest(key)}")
        typ = {"str": str, "int": int, "float": float, "bool": bool}[
            str(known[name].type)
        ]
        sections[section][name] = _coerce(key, value, typ, source)
    cfg = Config(**{s: SECTIONS[s](**kw) for s, kw in sections.items()})
    validate(cfg)
    return cfg


def _suggest(key: str) -> str:
    import difflib

    all_keys = list(Config().to_flat())
    close = difflib.get_close_matches(key, all_keys, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: invalid TOML ({e})") from None


def parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def resolve(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults <- base <- config file <- overrides (``--set``), validated."""
    flat = Config().to_flat()
    flat.update(base or {})
    if config_file:
        flat.update(_checked(flatten(read_toml(config_file)), str(config_file)))
    _checked(overrides or {}, "--set")
    flat.update(overrides or {})
    return from_flat(flat, source=str(config_file or ""))


def _checked(flat: dict[str, Any], source: str) -> dict[str, Any]:
    defaults = Config().to_flat()
    for key in flat:
        if key not in defaults:
            raise ConfigError(f"unknown config key {key!r} in {source}{_suggest(key)}")
    return flat


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    """Cross-field checks. Registry names are checked lazily to avoid import cycles."""
    from fedssl.algorithms import ALGORITHMS
    from fedssl.registry import STRATEGY_NAMES

    d, f, c, s, r = cfg.data, cfg.federation, cfg.client, cfg.server, cfg.run
    _require(d.dataset in DATASETS, f"data.dataset: unknown dataset {d.dataset!r} "
             f"(choose from {', '.join(DATASETS)})")
    _require(d.partition in PARTITIONS, f"data.partition: unknown partition "
             f"{d.partition!r} (choose from {', '.join(PARTITIONS)})")
    _require(d.alpha > 0, f"data.alpha must be > 0, got {d.alpha}")
    _require(d.num_clients >= 1, f"data.num_clients must be >= 1, got {d.num_clients}")
    _require(0 < d.labeled_ratio <= 1,
             f"data.labeled_ratio must be in (0, 1], got {d.labeled_ratio}")
    k = cfg.num_classes
    _require(0 <= d.seen_classes <= k,
             f"data.seen_classes must be in [1, {k}] (or 0 for all), got {d.seen_classes}")
    _require(1 <= d.classes_per_client <= k,
             f"data.classes_per_client must be in [1, {k}], got {d.classes_per_client}")
    unseen = k - cfg.num_seen
    _require(0 <= d.globally_unseen <= unseen,
             f"data.globally_unseen must be in [0, {unseen}] (the number of unseen "
             f"classes), got {d.globally_unseen}")
    _require(d.max_train_samples >= 0 and d.max_test_samples >= 0,
             "data.max_train_samples / max_test_samples must be >= 0")
    _require(f.rounds >= 1, f"federation.rounds must be >= 1, got {f.rounds}")
    _require(0 < f.fraction_train <= 1,
             f"federation.fraction_train must be in (0, 1], got {f.fraction_train}")
    _require(f.min_clients >= 1, f"federation.min_clients must be >= 1, got {f.min_clients}")
    _require(f.min_clients <= d.num_clients, f"federation.min_clients ({f.min_clients}) "
             f"exceeds data.num_clients ({d.num_clients})")
    _require(f.num_cpus > 0, f"federation.num_cpus must be > 0, got {f.num_cpus}")
    _require(f.num_gpus >= 0, f"federation.num_gpus must be >= 0, got {f.num_gpus}")
    _require(f.clients_per_node >= 0,
             f"federation.clients_per_node must be >= 0, got {f.clients_per_node}")
    _require(f.round_timeout > 0, f"federation.round_timeout must be > 0")
    _require(c.algorithm in ALGORITHMS, f"client.algorithm: unknown algorithm "
             f"{c.algorithm!r} (choose from {', '.join(sorted(ALGORITHMS))})")
    _require(s.strategy in STRATEGY_NAMES, f"server.strategy: unknown strategy "
             f"{s.strategy!r} (choose from {', '.join(STRATEGY_NAMES)})")
    _require(cfg.model.name in MODELS, f"model.name: unknown model {cfg.model.name!r} "
             f"(choose from {', '.join(MODELS)})")
    _require(c.local_steps > 0 or c.local_epochs > 0,
             "client.local_steps or client.local_epochs must be > 0")
    _require(c.batch_size >= 2, f"client.batch_size must be >= 2, got {c.batch_size}")
    _require(c.lr > 0, f"client.lr must be > 0, got {c.lr}")
    _require(c.uratio >= 1, f"client.uratio must be >= 1, got {c.uratio}")
    _require(c.pseudo_label_slots in PSEUDO_LABEL_SLOTS, f"client.pseudo_label_slots: unknown value "
             f"{c.pseudo_label_slots!r} (choose from {', '.join(PSEUDO_LABEL_SLOTS)})")
    _require(c.lr_schedule in LR_SCHEDULES, f"client.lr_schedule: unknown schedule "
             f"{c.lr_schedule!r} (choose from {', '.join(LR_SCHEDULES)})")
    _require(0 <= c.ema_decay < 1, f"client.ema_decay must be in [0, 1), got {c.ema_decay}")
    _require(0 <= c.teacher_sync <= 1,
             f"client.teacher_sync must be in [0, 1], got {c.teacher_sync}")
    _require(0 < c.threshold <= 1, f"client.threshold must be in (0, 1], got {c.threshold}")
    _require(c.pretrain_rounds >= 0, f"client.pretrain_rounds must be >= 0, got {c.pretrain_rounds}")
    _require(r.eval_every >= 1, f"run.eval_every must be >= 1, got {r.eval_every}")
    _require(r.checkpoint_every >= 0, "run.checkpoint_every must be >= 0")
    _require(bool(r.out_dir), "run.out_dir must not be empty")
    modes = cfg.faults.mode.replace(" ", "").split(",")
    _require(all(m in FAULT_MODES for m in modes), f"faults.mode: unknown mode "
             f"{cfg.faults.mode!r} (choose from {', '.join(FAULT_MODES)})")
    try:
        ids = fault_clients(cfg)
    except ValueError:
        raise ConfigError(f"faults.clients: expected comma-separated ids, got "
                          f"{cfg.faults.clients!r}") from None
    _require(cfg.faults.start_round >= 1, "faults.start_round must be >= 1")
    _require(len(modes) == 1 or len(modes) == len(ids), f"faults.mode lists {len(modes)} modes "
             f"but faults.clients lists {len(ids)} clients")
    _require(all(0 <= i < d.num_clients for i in ids),
             f"faults.clients: ids must be in [0, {d.num_clients}), got {cfg.faults.clients!r}")
    if ALGORITHMS[c.algorithm].open_world:
        _require(cfg.num_seen < k, f"client.algorithm={c.algorithm} needs unseen classes: "
                 f"set data.seen_classes below {k} (got {cfg.num_seen})")


def fault_clients(cfg: Config) -> list[int]:
    return [int(x) for x in cfg.faults.clients.replace(" ", "").split(",") if x]
