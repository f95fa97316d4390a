"""The names this org server answers to: the DNS and IP subject alternative names of the TLS
certificate it serves (read once at start), or the loopback names when it serves plain text on
loopback (tests). A device signs the name it connected to in each DeviceToken request, and an
access token is good only at a server with that name, so neither works when a server of another
name (a look-alike in the member's server list) collects and replays it."""

from __future__ import annotations

from cryptography import x509
from qpu_broker_client.errors import FailedPreconditionError

from qpu_broker.keys.device_key import audience

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def cert_names(cert_pem: bytes) -> tuple[str, ...]:
    """The DNS and IP subject alternative names of the first certificate in `cert_pem`."""
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    names = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
    names += tuple(audience(str(ip)) for ip in san.get_values_for_type(x509.IPAddress))
    if not names:
        raise FailedPreconditionError("the TLS certificate names no host (no DNS or IP subject alternative name): "
                                      "daemons could not check it, and access tokens could name no server; make one "
                                      "with 'qpu-broker org-server init --tls-host NAME'")
    return names


def serving_name(names: tuple[str, ...], host: str) -> str | None:
    """The name of `names` that `host` is (a wildcard `*.a.b` stands for one label), or None."""
    host = audience(host)
    for name in names:
        if name == host or (name.startswith("*.") and host.count(".") == name.count(".")
                            and host.split(".", 1)[1] == name[2:] and "*" not in host):
            return name
    return None
