"""FedAdam (Reddi et al., 2021): Adam on the server with the averaged client delta
as the pseudo-gradient (``server.eta``, ``beta_1``, ``beta_2``, ``tau``)."""

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam as _FedAdam

from fedssl.config import Config
from strategies import register
from strategies.base import FedSSLStrategy


@register("fedadam")
class FedAdam(FedSSLStrategy, _FedAdam):
    state_attrs = ("m_t", "v_t")

    def __init__(self, cfg: Config) -> None:
        s = cfg.server
        super().__init__(cfg, eta=s.eta, eta_l=cfg.client.lr, beta_1=s.beta_1,
                         beta_2=s.beta_2, tau=s.tau)

    def remember_global(self, arrays: ArrayRecord) -> None:
        self.current_arrays = {k: a.numpy() for k, a in arrays.items()}
