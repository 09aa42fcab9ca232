"""Real deployments with Flower's Deployment Engine (SuperLink + SuperNodes).

``fedssl deploy local --clients N``
    starts ``flower-superlink`` and N ``flower-supernode`` processes on this machine
    (127.0.0.1, free ports), gives every SuperNode its own exported data shard
    (``fedssl data export``) as node config ``data-dir``, writes a temporary
    ``$FLWR_HOME/config.toml`` SuperLink connection, runs
    ``flwr run <app> <connection> --run-config "<every config key>" --stream`` and
    stops every process it started (their whole process trees), also on Ctrl-C,
    SIGTERM and failure. The ServerApp writes the same files as ``fedssl run``
    (metrics.csv, summary.json, config.toml) to ``--out``; the processes' logs go to
    ``--out/deploy/``. ``--tls`` serves the SuperLink over TLS with a fresh local CA;
    ``--auth`` (implies ``--tls``) turns on SuperNode authentication: one EC P-384 key
    pair per node, public keys registered with ``flwr supernode register``, private
    keys passed with ``--auth-supernode-private-key``.

``fedssl deploy certs --out DIR``
    a CA and a SuperLink server certificate (SANs 127.0.0.1, localhost and any
    ``--host``), and prints the matching flags.

``fedssl deploy node-keys --out DIR --count N``
    SuperNode authentication key pairs (OpenSSH format, NIST P-384).

``fedssl deploy containers --clients N``
    the same federation in containers (podman or docker, with compose): images built
    offline and cached (:mod:`fedssl.deploy.images`), one compose file per federation
    (:mod:`fedssl.deploy.compose`), run from this host with ``flwr run``.

``fedssl node check`` / ``fedssl node start -- <flower-supernode flags>``
    validate a SuperNode's ``--node-config`` (partition-id in [0, num-partitions),
    data-dir holding this partition's shard, optionally against a run config) and
    exit 2 with one ``error:`` line when it is wrong; ``start`` then execs
    ``flower-supernode`` with the flags unchanged. Flower itself cannot reject a node
    config at SuperNode start (it only reaches the ClientApp with the first message).

Modules, lowest first: ``processes`` (ports, process trees), ``pki`` (certificates and
keys), ``federation`` (the :class:`Federation` base and the ``flwr`` CLI strings),
``local`` and ``images`` / ``compose`` / ``containers`` (the two kinds of federation),
``commands`` (what each subcommand does) and ``cli`` (their flags).
"""

from fedssl.deploy.containers import ContainerFederation
from fedssl.deploy.federation import (
    Federation,
    app_dir,
    flower_exe,
    node_config_string,
    parse_node_config,
    run_config_string,
    toml_value,
)
from fedssl.deploy.local import CONNECTION, LocalFederation
from fedssl.deploy.pki import make_certs, make_node_key
from fedssl.deploy.processes import (
    DeployError,
    Proc,
    ProcessSet,
    descendants,
    free_port,
    free_ports,
)

__all__ = ["CONNECTION", "ContainerFederation", "DeployError", "Federation", "LocalFederation", "Proc",
           "ProcessSet", "app_dir", "descendants", "flower_exe", "free_port", "free_ports", "make_certs",
           "make_node_key", "node_config_string", "parse_node_config", "run_config_string", "toml_value"]
