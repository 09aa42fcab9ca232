"""fedssl ServerApp: builds the strategy from the config and runs the round loop
(central evaluation, metrics.csv / summary.json / config.toml, checkpoints)."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedssl.config import Config
from fedssl.protocol import config_from_run_config
from fedssl.server.loop import ServerRunner, ServerSetup

_log = logging.getLogger("fedssl")
if not _log.handlers:  # under `flwr run` nobody else configures fedssl's logger
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s fedssl: %(message)s"))
    _log.addHandler(_handler)
    _log.setLevel(logging.INFO)


def make_server_app(cfg: Config | None = None, resume: bool = False, quiet: bool = False,
                    setup: ServerSetup | None = None) -> ServerApp:
    """A ServerApp bound to ``cfg`` (``fedssl run``) or reading the run config
    (``flwr run``) when ``cfg`` is None; ``setup``: what ``fedssl run`` built for ``cfg``
    before the simulation started (built here when None)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = cfg or config_from_run_config(context.run_config)
        ServerRunner(grid, run_cfg, resume=resume, quiet=quiet, setup=setup).run()

    return app


app = make_server_app()
