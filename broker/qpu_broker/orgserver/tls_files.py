"""`org-server init --tls-host NAME`: a private CA and a server certificate for the org server.

The CA key stays in the data dir (0600) so the admin can re-issue the server
certificate (`org-server tls issue`: another name, or before it expires) while
members keep their `ca.pem` (`qpu-broker org login --ca ca.pem`).
An organization with its own PKI passes --tls-cert/--tls-key to `serve` instead.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from qpu_broker_client.errors import InvalidArgumentError

CA_DAYS, SERVER_DAYS = 3650, 825


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    directory: pathlib.Path

    @property
    def ca(self) -> pathlib.Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> pathlib.Path:
        return self.directory / "ca.key"

    @property
    def cert(self) -> pathlib.Path:
        return self.directory / "server.pem"

    @property
    def key(self) -> pathlib.Path:
        return self.directory / "server.key"

    def exists(self) -> bool:
        return self.cert.exists() and self.key.exists()


def _write(path: pathlib.Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def check_tls_hosts(hosts: list[str]) -> list[str]:
    """The names a certificate is for, as it will hold them (IP addresses, or DNS names in
    A-labels), or InvalidArgumentError naming the bad one: checked before any file is written."""
    out = []
    for name in hosts:
        try:
            out.append(str(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        try:
            ascii_name = name.strip().rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            ascii_name = ""
        if not ascii_name or len(ascii_name) > 253 or not all(_LABEL.fullmatch(x) for x in ascii_name.split(".")):
            raise InvalidArgumentError(f"--tls-host {name!r} is not a host name or an IP address (no port, "
                                       "scheme, path or brackets): e.g. org.acme.example or 10.0.0.7")
        out.append(ascii_name)
    return out


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_tls_files(files: TlsFiles, org: str, hosts: list[str], now: datetime.datetime | None = None) -> None:
    """A CA for `org` and a server certificate for `hosts` (names or IP addresses)."""
    now = now or datetime.datetime.now(datetime.UTC)
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{org} org server CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    _write(files.ca_key, ca_key.private_bytes(pem, *_PRIVATE), 0o600)
    _write(files.ca, ca.public_bytes(pem), 0o644)
    issue_server_certificate(files, hosts, now)


_PRIVATE = (serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def issue_server_certificate(files: TlsFiles, hosts: list[str], now: datetime.datetime | None = None) -> datetime.datetime:
    """A new server key and certificate for `hosts`, signed by the data dir's CA (members keep
    their ca.pem); returns when it expires. The running server uses it from its next start."""
    now = now or datetime.datetime.now(datetime.UTC)
    if not files.ca_key.exists():
        raise FileNotFoundError(f"no CA key at {files.ca_key}: this data dir's certificates were not made by "
                                "'org-server init --tls-host' (an org with its own PKI issues them there)")
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    expires = min(now + datetime.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc)
    # The names are in the SAN (what clients check); the subject's CN only holds up to 64 characters.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])] if len(hosts[0]) <= 64 else [])
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(expires)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    _write(files.key, key.private_bytes(pem, *_PRIVATE), 0o600)
    _write(files.cert, cert.public_bytes(pem), 0o644)
    return expires
