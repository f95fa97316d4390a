"""How many connections session endpoints take, and how long one may stay silent.

Any local process can connect to a session's port, placeholder or not. Each connection
costs the daemon a file descriptor, and the daemon's gRPC socket draws on the same
limit, so a flood of idle connections to one session must not take the daemon away
from every other client: each endpoint takes at most PER_ENDPOINT connections, all
sessions together at most TOTAL, and a connection that sends nothing within
FIRST_BYTE_SECONDS is closed. Connections over a cap are closed at once, logged once a
minute at most.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
PER_ENDPOINT = 64  # an SDK uses a handful; a pool of 10 per host is requests' default
TOTAL = 256  # well under the 1024 descriptors a systemd service gets by default
FIRST_BYTE_SECONDS = 10.0
LOG_EVERY_SECONDS = 60.0


class Ticket:
    """One admitted connection's place; given back once, whoever notices the close first."""

    def __init__(self, gate: ConnectionGate, key: str) -> None:
        self._gate = gate
        self._key = key
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gate._release(self._key)


class ConnectionGate:
    def __init__(self, per_endpoint: int = PER_ENDPOINT, total: int = TOTAL) -> None:
        self._per_endpoint = per_endpoint
        self._total = total
        self._open: dict[str, int] = {}
        self._last_log = 0.0

    def factory(self, key: str, make: Callable[[Ticket], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` that admits within the caps."""
        def admit() -> asyncio.Protocol:
            if self._open.get(key, 0) >= self._per_endpoint or sum(self._open.values()) >= self._total:
                now = time.monotonic()
                if now - self._last_log >= LOG_EVERY_SECONDS:
                    self._last_log = now
                    log.warning("session endpoints: connection refused, over the cap of %d per endpoint and %d in all "
                                "(a local process is opening many)", self._per_endpoint, self._total)
                return _Refused()
            self._open[key] = self._open.get(key, 0) + 1
            return make(Ticket(self, key))
        return admit

    def _release(self, key: str) -> None:
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)


class Guarded(asyncio.Protocol):
    """Another protocol (aiohttp's request handler), with its ticket given back on close and
    closed if the peer says nothing at first."""

    def __init__(self, inner: asyncio.BaseProtocol, ticket: Ticket) -> None:
        self._inner = inner
        self._ticket = ticket
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self._timer = asyncio.get_running_loop().call_later(FIRST_BYTE_SECONDS, transport.close)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._ticket.release()
        self._inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        transport.abort()
