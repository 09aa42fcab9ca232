"""Datasets (numpy, cached per process) and federated semi-supervised partitions."""

from fedssl.data.partition import (
    Partition,
    Shard,
    cached_partition,
    client_shard,
    make_partition,
)
from fedssl.data.sources import DataError, DatasetSplits, load_dataset, stratified_subset

__all__ = [
    "DataError",
    "DatasetSplits",
    "Partition",
    "Shard",
    "cached_partition",
    "client_shard",
    "load_dataset",
    "make_partition",
    "stratified_subset",
]
