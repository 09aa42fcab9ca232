"""FedProx (Li et al., 2020): FedAvg aggregation; each client adds
(mu / 2) * ||w - w_global||^2 to its local loss (``server.proximal_mu``)."""

from typing import Any

from flwr.serverapp.strategy import FedProx as _FedProx

from fedssl.config import Config
from strategies import register
from strategies.base import FedSSLStrategy


@register("fedprox")
class FedProx(FedSSLStrategy, _FedProx):
    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, proximal_mu=cfg.server.proximal_mu)

    def client_config(self, server_round: int) -> dict[str, Any]:
        return {"proximal-mu": self.proximal_mu}
