"""FedAvgM (Hsu et al., 2019): server SGD with momentum on the pseudo-gradient
w_global - avg(w_clients)."""

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvgM as _FedAvgM

from fedssl.config import Config
from strategies import register
from strategies.base import FedSSLStrategy


@register("fedavgm")
class FedAvgM(FedSSLStrategy, _FedAvgM):
    state_attrs = ("current_arrays", "momentum_vector")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, server_learning_rate=cfg.server.server_lr,
                         server_momentum=cfg.server.server_momentum)

    def remember_global(self, arrays: ArrayRecord) -> None:
        self.current_arrays = arrays
