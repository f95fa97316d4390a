"""Why a TLS connection to an org server failed, in words a user can act on.

grpc reports every failure to connect as UNAVAILABLE with a transport message
("Connection refused", "WRONG_VERSION_NUMBER: Invalid certificate verification
context"). When a login fails that way, the daemon repeats the handshake once
with the standard library, which names the cause: nothing listening, an
unknown CA, a certificate for another name, an expired certificate, or a
server that does not speak TLS. Nothing secret is sent: the handshake ends
before any request.
"""

from __future__ import annotations

import socket
import ssl

from qpu_broker.common.reach import split_host_port

TIMEOUT = 5.0
_UNKNOWN_CA = {18, 19, 20, 21, 2}  # self-signed, self-signed in chain, unknown issuer, leaf only, no issuer cert
_NAME_MISMATCH = {62, 64}  # host name, IP address
_EXPIRED = 10


def diagnose(server: str, ca_pem: bytes) -> str | None:
    """A one-line cause for a failed TLS connection to `server`, or None if the handshake works."""
    try:
        host, port = split_host_port(server, None)
    except ValueError:
        return f"the org server {server!r} is not HOST:PORT"
    if port is None:
        return f"the org server {server!r} has no port: give HOST:PORT"
    ctx = ssl.create_default_context()
    if ca_pem:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii", errors="replace"))
    ctx.set_alpn_protocols(["h2"])
    try:
        raw = socket.create_connection((host, port), timeout=TIMEOUT)
    except ConnectionRefusedError:
        return f"nothing is listening on {server} (connection refused): is the org server running, on that port?"
    except socket.gaierror:
        return f"the org server's host name {host!r} does not resolve: check --server"
    except OSError as exc:
        return f"cannot reach the org server {server}: {exc.strerror or type(exc).__name__}"
    with raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=host):
                return None
        except ssl.SSLCertVerificationError as exc:
            return _verify_failure(server, host, exc, bool(ca_pem))
        except ssl.SSLError as exc:
            if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                              "UNEXPECTED_RECORD", "HTTP_REQUEST") or "version" in str(exc).lower():
                return (f"the org server at {server} does not speak TLS (a plaintext server?): the daemon talks to "
                        "org servers over TLS only; start it with --tls-cert and --tls-key")
            return f"the TLS handshake with the org server {server} failed: {exc.reason or exc}"
        except (ConnectionResetError, TimeoutError, OSError):
            return (f"the org server at {server} closed the connection during the TLS handshake: is it an org server "
                    "with TLS on that port?")


def _verify_failure(server: str, host: str, exc: ssl.SSLCertVerificationError, have_ca: bool) -> str:
    code = exc.verify_code
    if code in _UNKNOWN_CA:
        hint = "the --ca FILE given does not sign it" if have_ca else "pass --ca FILE with the org's CA certificate"
        return f"the org server's certificate at {server} is signed by an unknown CA: {hint}"
    if code in _NAME_MISMATCH:
        return (f"the org server's certificate at {server} is not for {host!r}: connect with the host name on "
                "its certificate, or re-issue it for this name (qpu-broker org-server tls issue --tls-host NAME)")
    if code == _EXPIRED:
        return (f"the org server's certificate at {server} has expired: renew it (qpu-broker org-server tls issue "
                "--tls-host NAME), then restart the server")
    return f"the org server's certificate at {server} was refused: {exc.verify_message}"
