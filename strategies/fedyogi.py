"""FedYogi (Reddi et al., 2021): like FedAdam, with Yogi's additive second-moment
update v_t = v - (1 - beta_2) * d^2 * sign(v - d^2)."""

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedYogi as _FedYogi

from fedssl.config import Config
from strategies import register
from strategies.base import FedSSLStrategy


@register("fedyogi")
class FedYogi(FedSSLStrategy, _FedYogi):
    state_attrs = ("m_t", "v_t")

    def __init__(self, cfg: Config) -> None:
        s = cfg.server
        super().__init__(cfg, eta=s.eta, eta_l=cfg.client.lr, beta_1=s.beta_1,
                         beta_2=s.beta_2, tau=s.tau)

    def remember_global(self, arrays: ArrayRecord) -> None:
        self.current_arrays = {k: a.numpy() for k, a in arrays.items()}
