"""``Config``: one experiment's whole configuration, built only through validation.

:func:`from_flat` is the one constructor that checks: every key against its declaration
(:mod:`fedssl.config.schema`, :mod:`fedssl.config.validate`), then the few checks that
span keys (``CROSS_CHECKS`` here). :meth:`Config.replace` and unpickling go through it
too, so no process ever holds a config that was not validated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedssl.config.keys import Params, algorithm_keys, section_of
from fedssl.config.schema import (PARTITIONS, SECTIONS, ClientConfig, DataConfig, FaultsConfig, FederationConfig,
                                  ModelConfig, RunConfig, ServerConfig, StreamConfig, num_classes_of, shared_keys)
from fedssl.config.validate import (FLWR_PARTITION, ConfigError, algorithm_class, check_class_counts, check_key,
                                    checked_keys, flatten, foreign_key, read_toml, require, stream_lists, unknown_key)
from fedssl.registry import ALGORITHMS


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    #: the chosen algorithm's own keys, ``[client.<name>]``; left out: its defaults
    algo_params: Params = field(default_factory=Params)

    def __post_init__(self) -> None:
        wanted = self.algorithm_class.params_class
        if type(self.algo_params) is Params and wanted is not Params:
            object.__setattr__(self, "algo_params", wanted())
        if type(self.algo_params) is not wanted:
            raise TypeError(f"algo_params is {type(self.algo_params).__name__}, "
                            f"{self.client.algorithm} takes {wanted.__name__}")

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickled as its keys and rebuilt by validation: a user algorithm's parameters
        are an instance of a class from a file, which another process (a Ray worker)
        can only import by the path in ``client.algorithm``."""
        return from_flat, (self.to_flat(),)

    @property
    def algorithm_class(self) -> Any:
        """The class ``client.algorithm`` names (built-in or the user's)."""
        return ALGORITHMS.load(self.client.algorithm)

    @property
    def algorithm_section(self) -> str:
        """``client.<name>``: the section of the chosen algorithm's own keys."""
        return f"client.{section_of(self.algorithm_class)}"

    def to_flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every key (Flower run config form); the
        algorithm's own keys as ``client.<name>.<key>``."""
        flat = {f"{s}.{k}": v for s in SECTIONS for k, v in dataclasses.asdict(getattr(self, s)).items()}
        own = dataclasses.asdict(self.algo_params)
        return {**flat, **{f"{self.algorithm_section}.{k}": v for k, v in own.items()}}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}
        own = dataclasses.asdict(self.algo_params)
        if own:  # [client.<name>], a sub-table of [client]
            out["client"][self.algorithm_section.partition(".")[2]] = own
        return out

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    def replace(self, **flat: Any) -> Config:
        """A copy with dotted keys overridden (validated). Another algorithm starts
        from its own defaults (its section and its overrides of shared keys)."""
        mine = self.to_flat()
        if flat.get("client.algorithm", self.client.algorithm) != self.client.algorithm:
            own = self.algorithm_section + "."
            mine = {k: v for k, v in mine.items() if not k.startswith(own)}
        return from_flat({**mine, **flat})

    @property
    def num_classes(self) -> int:
        return num_classes_of(self.data.dataset)

    @property
    def num_seen(self) -> int:
        return self.data.seen_classes or self.num_classes


def _check_partition(cfg: Config) -> None:
    """fedssl's own scheme, or a Flower Datasets partitioner whose class and arguments are
    checked when the data is split (importing flwr-datasets here would slow ``fedssl config``)."""
    p = cfg.data.partition
    require(p in PARTITIONS or (p.startswith(FLWR_PARTITION) and p[len(FLWR_PARTITION):].isidentifier()),
             f"data.partition: unknown partition {p!r} (choose from {', '.join(PARTITIONS)}, "
             f"or give 'flwr:<PartitionerClass>')")


def _check_classes(cfg: Config) -> None:
    d = cfg.data
    check_class_counts(d, cfg.num_classes)
    require(d.labeled_ratio > 0 or d.server_labels_per_class > 0,
             "data.labeled_ratio must be in (0, 1] (0 only with data.server_labels_per_class > 0), "
             f"got {d.labeled_ratio}")
    require(d.server_labels_per_class == 0 or d.partition != "openworld",
             "data.server_labels_per_class is not supported with data.partition=openworld "
             "(the server would need labels of unseen classes); set it to 0")
    require(cfg.server.bn_stats == "server" or (d.server_labels_per_class > 0 and not cfg.stream.stages),
             "server.bn_stats=server_clients needs labels at the server (data.server_labels_per_class > 0) "
             "and no [stream] stages")
    require(cfg.server.bn_stats == "server" or cfg.model.name != "cnn",
             "server.bn_stats=server_clients needs a model with batch norm; model.name=cnn has none (try cnn_bn)")
    require(d.globally_unseen == 0 or d.partition == "openworld",
             f"data.globally_unseen={d.globally_unseen} only applies with data.partition=openworld "
             f"(got partition={d.partition!r})")


def _check_clients(cfg: Config) -> None:
    f, n = cfg.federation, cfg.data.num_clients
    require(f.min_clients <= n, f"federation.min_clients ({f.min_clients}) exceeds data.num_clients ({n})")
    try:
        ids = fault_clients(cfg)
    except ValueError:
        raise ConfigError(f"faults.clients: expected comma-separated ids, got {cfg.faults.clients!r}") from None
    modes = cfg.faults.mode.split(",")
    require(len(modes) == 1 or len(modes) == len(ids),
             f"faults.mode lists {len(modes)} modes but faults.clients lists {len(ids)} clients")
    require(all(0 <= i < n for i in ids), f"faults.clients: ids must be in [0, {n}), got {cfg.faults.clients!r}")


def _check_client(cfg: Config) -> None:
    c = cfg.client
    require(c.local_steps > 0 or c.local_epochs > 0, "client.local_steps or client.local_epochs must be > 0")
    require(bool(cfg.run.out_dir), "run.out_dir must not be empty")
    if cfg.algorithm_class.open_world:
        k = cfg.num_classes
        require(cfg.num_seen < k, f"client.algorithm={c.algorithm} needs unseen classes: "
                 f"set data.seen_classes below {k} (got {cfg.num_seen})")


def _check_stream(cfg: Config) -> None:
    s = cfg.stream
    if s.stages == 0:
        return
    domains, sev = stream_lists(s)
    require(len(domains) >= s.stages, f"stream.domains lists {len(domains)} domains for stream.stages="
             f"{s.stages}; give at least one per stage")
    require(len(sev) in (0, 1, len(domains)) and all(1 <= v <= 5 for v in sev),
             f"stream.severities={s.severities!r}: give one severity in 1..5, or one per domain "
             f"({len(domains)}), or none for the reference's defaults")
    require(cfg.federation.rounds == s.stages * s.rounds_per_stage,
             f"federation.rounds ({cfg.federation.rounds}) must equal stream.stages x stream.rounds_per_stage "
             f"({s.stages} x {s.rounds_per_stage} = {s.stages * s.rounds_per_stage})")
    require(cfg.data.partition != "openworld", "stream.stages > 0 is not supported with "
             "data.partition=openworld (unseen classes are not staged); use iid, dirichlet or pathological")


# Checks that span keys; single-key checks come from the schema declarations.
CROSS_CHECKS: list[Callable[[Config], None]] = [_check_partition, _check_classes, _check_clients, _check_client,
                                                _check_stream]


def fault_clients(cfg: Config) -> list[int]:
    return [int(x) for x in cfg.faults.clients.split(",") if x]


def from_flat(flat: dict[str, Any], source: str = "") -> Config:
    """Build a validated Config from dotted keys; unknown keys are errors. A key left
    out takes the chosen algorithm's default (its ``client_defaults`` for a shared
    ``[client]`` key, its ``params_class`` for its own ``client.<name>.<key>``)."""
    shared = shared_keys()
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    own_flat: dict[str, Any] = {}
    for name, value in flat.items():
        if name in shared:
            section, _, short = name.partition(".")
            sections[section][short] = check_key(shared[name], value, source)
        elif name.startswith("client.") and name.count(".") == 2:
            own_flat[name] = value
        elif name.startswith("client.") and name.count(".") == 1:
            own_flat[name] = value  # perhaps one of the algorithm's keys without its section
        else:
            raise unknown_key(name, source)
    name = sections["client"].get("algorithm", ClientConfig.algorithm)
    cls = algorithm_class(name)
    for short, value in cls.client_defaults.items():
        if short not in sections["client"]:
            sections["client"][short] = check_key(shared[f"client.{short}"], value, f"{name}'s client_defaults")
    declared, own = algorithm_keys(cls), f"client.{section_of(cls)}"
    params = {}
    for key_name, value in own_flat.items():
        if key_name not in declared:
            raise foreign_key(key_name, own, name, source)
        params[key_name.rpartition(".")[2]] = check_key(declared[key_name], value, source)
    cfg = Config(**{s: SECTIONS[s](**kw) for s, kw in sections.items()}, algo_params=cls.params_class(**params))
    for check in CROSS_CHECKS:
        check(cfg)
    return cfg


def resolve(config_file: str | None = None, overrides: dict[str, Any] | None = None,
            base: dict[str, Any] | None = None) -> Config:
    """Defaults <- base <- config file <- overrides (``--set``), validated."""
    flat = dict(base or {})
    if config_file:
        flat.update(checked_keys(flatten(read_toml(config_file)), str(config_file)))
    flat.update(checked_keys(overrides or {}, "--set"))
    return from_flat(flat, source=str(config_file or ""))
