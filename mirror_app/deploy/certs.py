"""Certificates and node keys for a secured test deployment (TLS + SuperNode authentication).

    python -m mirror_app.deploy.certs --out certs --nodes 3 --host 127.0.0.1 --host superlink.lan

writes ``ca.crt``/``ca.key`` (a private CA), ``server.pem``/``server.key`` (the SuperLink's
certificate for the given hosts, signed by the CA) and ``node<i>``/``node<i>.pub`` (one EC
P-384 key pair per SuperNode in OpenSSH format, what ``flower-supernode
--auth-supernode-private-key`` and ``flwr supernode register`` read). Made with the
``cryptography`` package, no external tools. For test deployments: use your organisation's
CA for real ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certs:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    if private:
        tmp.chmod(0o600)
    tmp.replace(path)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certs(out: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 365) -> Certs:
    """A CA and a server certificate valid for ``hosts`` (IP addresses or DNS names)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modality-mirror test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certs = Certs(out / "ca.crt", out / "server.pem", out / "server.key")
    _write(out / "ca.key", _key_pem(ca_key), private=True)
    _write(certs.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    _write(certs.server_key, _key_pem(server_key), private=True)
    _write(certs.server_cert, server.public_bytes(serialization.Encoding.PEM))
    return certs


def make_node_key(out: str | Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format: (private key file, public key file ``<name>.pub``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / name, out / f"{name}.pub"
    _write(
        private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        private=True,
    )
    _write(
        public,
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n",
    )
    return private, public


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mirror_app.deploy.certs", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="certs")
    p.add_argument("--nodes", type=int, default=3, help="node key pairs to make (node0 ... node<N-1>)")
    p.add_argument(
        "--host",
        action="append",
        default=None,
        help="a name or IP the SuperLink is reached at (repeat; default 127.0.0.1 and localhost)",
    )
    a = p.parse_args(argv)
    certs = make_certs(a.out, tuple(a.host or ("127.0.0.1", "localhost")))
    for i in range(a.nodes):
        make_node_key(a.out, f"node{i}")
    print(
        f"CA {certs.ca_cert}, SuperLink certificate {certs.server_cert} + {certs.server_key}, "
        f"node keys {a.out}/node0..node{a.nodes - 1} (+ .pub)"
    )


if __name__ == "__main__":
    main()
