"""FedAvg (McMahan et al., 2017): example-weighted average of client models."""

from flwr.serverapp.strategy import FedAvg as _FedAvg

from strategies import register
from strategies.base import FedSSLStrategy


@register("fedavg")
class FedAvg(FedSSLStrategy, _FedAvg):
    pass
