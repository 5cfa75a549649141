"""Certificates and node keys for a secured test deployment (TLS + SuperNode authentication).

    python -m mirror_app.deploy.certs --out certs --nodes 3 --host 127.0.0.1 --host superlink.lan

writes ``ca.crt``/``ca.key`` (a private CA), ``server.pem``/``server.key`` (the SuperLink's
certificate for the given hosts, signed by the CA) and ``node<i>``/``node<i>.pub`` (one EC
P-384 key pair per SuperNode in OpenSSH format, what ``flower-supernode
--auth-supernode-private-key`` and ``flwr supernode register`` read). Made with the
``cryptography`` package, no external tools. For test deployments: use your organisation's
CA for real ones.

Private keys are created readable by their owner only from the first byte (``os.open`` with mode 0600, never a
chmod after the fact) and are never replaced silently: a folder that already holds a CA or a node key is refused
in one line unless ``--force`` (new keys: every node must then be given its own again). Keep the folder out of
version control (the project's .gitignore ignores ``certs/``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
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


class KeysExist(FileExistsError):
    """The folder already holds keys: replacing them needs ``force``."""


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary name; a private file is mode 0600 from its creation."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise KeysExist(
            f"{existing[0]} exists: these keys are in use (replacing them locks out every node holding the old "
            "ones); choose another --out, or --force to make new ones"
        )


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certs(
    out: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 365, force: bool = False
) -> Certs:
    """A CA and a server certificate valid for ``hosts`` (IP addresses or DNS names); :class:`KeysExist` where the
    folder already holds them, unless ``force``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _refuse_existing([out / n for n in ("ca.key", "ca.crt", "server.key", "server.pem")], force)
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


def make_node_key(out: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format: (private key file, public key file ``<name>.pub``);
    :class:`KeysExist` where they exist, unless ``force``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / name, out / f"{name}.pub"
    _refuse_existing([private, public], force)
    key = ec.generate_private_key(ec.SECP384R1())
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirror_app.deploy.certs", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="certs")
    p.add_argument("--nodes", type=int, default=3, help="node key pairs to make (node0 ... node<N-1>)")
    p.add_argument(
        "--host",
        action="append",
        default=None,
        help="a name or IP the SuperLink is reached at (repeat; default 127.0.0.1 and localhost)",
    )
    p.add_argument("--force", action="store_true", help="replace the CA, the certificate and the node keys there")
    a = p.parse_args(argv)
    names = [f"node{i}" for i in range(a.nodes)]
    try:  # every file checked before any is written
        _refuse_existing([Path(a.out) / n for n in ("ca.key", *names, *(f"{n}.pub" for n in names))], a.force)
        certs = make_certs(a.out, tuple(a.host or ("127.0.0.1", "localhost")), force=a.force)
        for name in names:
            make_node_key(a.out, name, force=a.force)
    except KeysExist as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"CA {certs.ca_cert}, SuperLink certificate {certs.server_cert} + {certs.server_key}, "
        f"node keys {a.out}/node0..node{a.nodes - 1} (+ .pub); private keys mode 0600"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
