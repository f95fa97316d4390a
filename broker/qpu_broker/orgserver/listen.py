"""The address `org-server serve` listens on: parsed once, then tried before grpc takes it.

grpc says only "Failed to bind to address" (a RuntimeError, with its own log line beside it)
whatever the cause; a port another process holds, an address that is not this machine's and
a privileged port each need a different fix, so a plain socket is bound first, without
SO_REUSEPORT (which would let it share a port another server holds), and its error is said.
"""

from __future__ import annotations

import errno
import socket

from qpu_broker_client.errors import FailedPreconditionError

_WHY = {
    errno.EADDRINUSE: "another process listens on that port ('ss -ltnp' names it): stop it, or choose another port",
    errno.EADDRNOTAVAIL: "the host is not an address of this machine: give one of its own ('ip -brief address' "
                         "lists them), or 0.0.0.0 for all of them",
    errno.EACCES: "a port below 1024 needs privilege (CAP_NET_BIND_SERVICE): choose a port from 1024 up",
}


def parse_listen(listen: str, option: str = "--listen") -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port)."""
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]").lower()
    if not host or not port.isdigit() or int(port) > 65535:
        raise FailedPreconditionError(f"{option} {listen!r} is not HOST:PORT (e.g. 0.0.0.0:7443 or 127.0.0.1:7443)")
    return host, int(port)


def check_bindable(listen: str, host: str, port: int) -> None:
    """Raise the one-line reason grpc could not listen on `listen`, if there is one now."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise FailedPreconditionError(f"cannot listen on {listen}: the host does not resolve ({exc.strerror})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc: a closed port's TIME_WAIT is free
            try:
                probe.bind(address)
            except OSError as exc:
                raise FailedPreconditionError(
                    f"cannot listen on {listen}: {exc.strerror}; {_WHY.get(exc.errno, 'choose another --listen')}"
                ) from None
