"""fedssl: federated semi-supervised learning on Flower + Ray."""

from importlib import metadata as _metadata

try:  # the one place the version is written is pyproject.toml (Flower's app config needs it there)
    __version__ = _metadata.version("fedssl")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
