"""Typed experiment configuration, declared once and validated once at the edge.

A config is a set of TOML sections (``[data]``, ``[federation]`` ...). Every shared key
is declared on one line in :mod:`fedssl.config.schema` (type, default, allowed values,
range, help); each algorithm declares its own keys, the ``[client.<name>]`` section, in
its own file (:class:`Params`). Validation, ``[tool.flwr.app.config]``, the README table
and ``fedssl config`` are generated from these declarations. Every entry point
(``fedssl run``, the Flower apps' run config, ``fedssl bench`` cells) goes through
:func:`resolve` or :func:`from_flat`, so the core never re-checks inputs. Errors raise
:class:`ConfigError` with a one-line message naming the key and the bad value.

Importing this package imports neither torch nor Flower.
"""

from fedssl.config.keys import Key, Params, algorithm_keys, key, param, section_of
from fedssl.config.schema import (
    DATASETS,
    FAULT_MODES,
    LR_SCHEDULES,
    MODELS,
    PARTITIONS,
    SECTIONS,
    ClientConfig,
    DataConfig,
    FaultsConfig,
    FederationConfig,
    ModelConfig,
    RunConfig,
    ServerConfig,
    StreamConfig,
    keys,
    num_classes_of,
    shared_keys,
)
from fedssl.config.validate import (
    ConfigError,
    algorithm_class,
    check_class_counts,
    check_key,
    checked_keys,
    coerce,
    flatten,
    own_keys_only,
    parse_set,
    read_toml,
    suggest,
    unknown_key,
)
from fedssl.config.experiment import Config, fault_clients, from_flat, resolve

__all__ = [
    "DATASETS", "FAULT_MODES", "LR_SCHEDULES", "MODELS", "PARTITIONS", "SECTIONS",
    "ClientConfig", "Config", "ConfigError", "DataConfig", "check_class_counts", "FaultsConfig", "FederationConfig", "Key",
    "ModelConfig", "Params", "RunConfig", "ServerConfig", "StreamConfig", "algorithm_class", "algorithm_keys", "check_key",
    "checked_keys", "coerce", "fault_clients", "flatten", "from_flat", "key", "keys", "num_classes_of", "own_keys_only", "param",
    "parse_set", "read_toml", "resolve", "section_of", "shared_keys", "suggest", "unknown_key",
]
