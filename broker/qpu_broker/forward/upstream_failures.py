"""Why a provider could not be reached, in words a user can act on: connection refused, a host
name that does not resolve, a TLS certificate not trusted, a handshake that failed. Said once
here for every call the forwarder makes (forwards, and its token exchanges), so the error a
client or a session's SDK shows, the daemon's log line and the audit entry all say the same.
Built from the exception's type and the OS's or OpenSSL's own words: no URL path, no header,
nothing of a request.
"""

from __future__ import annotations

import ssl

from qpu_broker_client.errors import UnavailableError


def what_failed(exc: BaseException) -> str:
    """One phrase for an aiohttp client error raised before any answer came."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "verify_message", "") or getattr(cert_error, "reason", "") or str(cert_error)
        return f"its TLS certificate is not trusted ({reason}): is the CA in the provider's ca_file?"
    if isinstance(exc, (aiohttp.ClientConnectorSSLError, aiohttp.ClientSSLError)):
        os_error = getattr(exc, "os_error", None)
        reason = os_error.reason if isinstance(os_error, ssl.SSLError) and os_error.reason else type(os_error).__name__
        return f"the TLS handshake failed ({reason})"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its host name does not resolve (DNS)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientOSError) and exc.strerror:
        return f"the connection failed ({exc.strerror})"
    return f"the connection failed ({type(exc).__name__})"


def unreachable(where: str, exc: BaseException) -> UnavailableError:
    """`where`: the host and whose it is, e.g. "api.ionq.co (ionq)"."""
    return UnavailableError(f"cannot reach {where}: {what_failed(exc)}")
