"""sd_notify(3) without libsystemd (one datagram to $NOTIFY_SOCKET), and the ready/stopping
steps the daemon and the org server share."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Mapping


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send e.g. "READY=1"; a no-op (False) when not run by a notify-aware manager."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def ready(stop: asyncio.Event, status: str = "") -> None:
    """A server is up: SIGTERM and SIGINT set `stop` from now on, and systemd hears READY."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notify("READY=1\n" + (f"STATUS={status}\n" if status else "") + f"MAINPID={os.getpid()}")


async def stopping(stop: asyncio.Event) -> None:
    """Wait for `stop` (a signal, or a Stop call), then tell systemd the server is stopping."""
    await stop.wait()
    notify("STOPPING=1")
