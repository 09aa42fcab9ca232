"""TLS and SuperNode-authentication material for a deployment (EC P-384 keys).

``cryptography`` is imported inside the functions: it is only needed when a
certificate or key is actually made.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    return now, now + datetime.timedelta(days=days)


def _make_ca(days: int) -> tuple[Any, Any, Any]:
    """(CA key, CA certificate, CA name), self-signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    start, until = _validity(days)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedssl local CA")])
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert, name


def _alt_names(hosts: Iterable[str]) -> list[Any]:
    """SANs: 127.0.0.1, ::1, localhost and ``hosts`` (IPs as IP entries, the rest DNS)."""
    from cryptography import x509

    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(["127.0.0.1", "::1", "localhost", *hosts]):
        if not h:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return names


def _server_cert(ca_key: Any, ca_name: Any, hosts: list[str], days: int) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    start, until = _validity(days)
    key = ec.generate_private_key(ec.SECP384R1())
    cn = next((h for h in hosts if h), "localhost")
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def make_certs(out: str | Path, hosts: Iterable[str] = (), days: int = 365) -> dict[str, Path]:
    """A self-signed CA and a SuperLink server certificate signed by it, with SANs
    127.0.0.1, ::1, localhost and ``hosts``. Files: ca.crt, ca.key, server.pem,
    server.key (keys are written 0600)."""
    from cryptography.hazmat.primitives import serialization

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hosts = list(hosts)
    ca_key, ca, ca_name = _make_ca(days)
    key, cert = _server_cert(ca_key, ca_name, hosts, days)
    pem = serialization.Encoding.PEM
    paths = {}
    for name, data in {"ca.crt": ca.public_bytes(pem), "server.pem": cert.public_bytes(pem)}.items():
        (out / name).write_bytes(data)
        paths[name] = out / name
    for name, k in {"ca.key": ca_key, "server.key": key}.items():
        write_secret(out / name, k.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        paths[name] = out / name
    return paths


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only (0600 from creation on)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_node_key(out: str | Path, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (NIST P-384, OpenSSH format, as
    ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register``
    expect): ``out/name`` (private, 0600) and ``out/name.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)
    write_secret(out / name, priv)
    (out / f"{name}.pub").write_bytes(pub + f" {name}\n".encode())
    return out / name, out / f"{name}.pub"

