"""A certificate authority that lives for one exec session, in memory.

An SDK that builds its URLs from host names (qiskit-ibm-runtime) cannot be pointed at a
loopback endpoint, so its session is an HTTPS proxy that terminates TLS for the provider's
hosts. The SDK trusts this CA through the CA-bundle variables of the session, and only
for as long as the session lives: the CA's key is made at session start, never written
to disk, and dropped with the session, so a bundle captured from the environment later
vouches for nothing anyone holds.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib
import ssl
from collections.abc import Iterable

LIFETIME = datetime.timedelta(days=1)  # a session longer than this gets errors, not a stale CA


@dataclasses.dataclass(frozen=True)
class SessionCA:
    ca_pem: bytes  # public: goes into the bundle the SDK trusts
    server_context: ssl.SSLContext  # presents the leaf for the provider's host names


def make_session_ca(names: Iterable[str]) -> SessionCA:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qpu-broker exec session CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + LIFETIME)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qpu-broker session")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + LIFETIME)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    chain = (leaf.public_bytes(pem) + leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_from_memory(context, chain)
    return SessionCA(ca.public_bytes(pem), context)


def _load_from_memory(context: ssl.SSLContext, chain: bytes) -> None:
    """ssl loads keys from paths only: an anonymous memory file gives it one that is on no disk."""
    fd = os.memfd_create("qpu-broker-session-key", os.MFD_CLOEXEC)
    try:
        os.write(fd, chain)
        context.load_cert_chain(pathlib.Path(f"/proc/self/fd/{fd}"))
    finally:
        os.close(fd)


def trust_bundle(ca_pem: bytes) -> bytes:
    """The session CA and the system's roots: the SDK's other HTTPS traffic goes through the
    proxy's plain tunnel and must still verify against the real CAs."""
    roots = b""
    for candidate in (_certifi(), ssl.get_default_verify_paths().cafile):
        if candidate:
            try:
                roots = pathlib.Path(candidate).read_bytes()
                break
            except OSError:
                continue
    return ca_pem + b"\n" + roots


def _certifi() -> str | None:
    try:
        import certifi  # requests' own roots, which is what requests-based SDKs verify against
    except ImportError:
        return None
    return certifi.where()
