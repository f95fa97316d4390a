"""How many connections session endpoints take, which give way, and how long one may dawdle.

Any local process, of any user, can connect to a session's port, placeholder or not. Each
connection costs the daemon a file descriptor, and the daemon's gRPC socket draws on the
same limit, so a flood of connections must take neither the daemon from its other clients
nor a session from its own SDK:
- each endpoint takes at most PER_ENDPOINT connections, all sessions together TOTAL;
- a connection is *unproven* until it shows the session's credential (a request admitted
  with the placeholder, or the proxy's CONNECT with it). Strangers cannot show it, so they
  only ever hold unproven places: at most UNPROVEN_PER_ENDPOINT of them per endpoint, and
  when a cap is reached the oldest unproven connection is closed to make room. A new
  connection is refused only when every place it could take is held by proven ones (the
  session's own command);
- a request head must be whole within `[sessions] head_seconds` of its connection opening
  or of the previous answer, and a body may pause no longer than `body_idle_seconds`.
Refusals and evictions are logged once a minute at most, nothing per connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from qpu_broker.common.config import Config
from qpu_broker.common.log_pace import LogPace

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)
PER_ENDPOINT = 64  # an SDK uses a handful; a pool of 10 per host is requests' default
TOTAL = 256  # well under the 1024 descriptors a systemd service gets by default
# Room for an SDK's burst of new connections (requests' pool of 10) before one is proven; a
# stranger holds no more than this per endpoint, and can push out only other unproven ones.
UNPROVEN_PER_ENDPOINT = 16
LOG_EVERY_SECONDS = 60.0

Handle = Callable[["web.BaseRequest"], Awaitable["web.StreamResponse"]]


class Ticket:
    """One admitted connection's place: counted until given back, open to eviction until proven."""

    def __init__(self, gate: ConnectionGate, key: str) -> None:
        self.key = key
        self.proven = False
        self._gate = gate
        self._held = True
        self._transport: asyncio.BaseTransport | None = None

    def attach(self, transport: asyncio.BaseTransport) -> None:
        """The connection's transport, to close it by; one evicted before it was made closes now."""
        if not self._held:
            transport.abort()  # type: ignore[attr-defined]
            return
        self._transport = transport

    def prove(self) -> None:
        """The connection showed the session's credential: it keeps its place from now on."""
        if self._held and not self.proven:
            self.proven = True
            self._gate._proven(self)

    def release(self) -> None:
        """Given back once, whoever notices the close first."""
        if self._held:
            self._held = False
            self._gate._release(self)

    def close(self) -> None:
        """Evicted, or its session ended: the place is free at once, the connection goes."""
        self.release()
        if self._transport is not None:
            self._transport.abort()  # type: ignore[attr-defined]


class ConnectionGate:
    def __init__(self, per_endpoint: int = PER_ENDPOINT, total: int = TOTAL,
                 unproven: int = UNPROVEN_PER_ENDPOINT) -> None:
        self._per_endpoint = per_endpoint
        self._total = total
        self._unproven_cap = unproven
        self._held: dict[str, dict[Ticket, None]] = {}  # endpoint key -> its places
        self._unproven: dict[Ticket, None] = {}  # every endpoint's, oldest first
        self._count = 0

    def factory(self, key: str, make: Callable[[Ticket], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` that admits within the caps."""
        def admit() -> asyncio.Protocol:
            ticket = self.admit(key)
            return _Refused() if ticket is None else make(ticket)
        return admit

    def admit(self, key: str) -> Ticket | None:
        """A place for a new connection to `key`, made by closing the oldest unproven one where a
        cap is reached; None when only proven connections hold the places."""
        if sum(1 for t in self._held.get(key, ()) if not t.proven) >= self._unproven_cap:
            self._evict(key)
        if (len(self._held.get(key, ())) >= self._per_endpoint and not self._evict(key)) or \
                (self._count >= self._total and not self._evict(None)):
            self._note("a connection was refused: connections that showed a session's credential hold every place")
            return None
        ticket = Ticket(self, key)
        self._held.setdefault(key, {})[ticket] = None
        self._unproven[ticket] = None
        self._count += 1
        return ticket

    def close(self, key: str) -> None:
        """Every connection to the endpoint `key` (its session ended)."""
        for ticket in list(self._held.get(key, ())):
            ticket.close()

    def _evict(self, key: str | None) -> bool:
        oldest = next((t for t in self._unproven if key is None or t.key == key), None)
        if oldest is None:
            return False
        self._note("the oldest connection that had not shown a session's credential was closed to make room")
        oldest.close()
        return True

    def _note(self, what: str) -> None:
        if note_now(what):
            log.warning("session endpoints: %s (caps: %d per endpoint, %d of them unproven, %d in all; a local "
                        "process is opening many)", what, self._per_endpoint, self._unproven_cap, self._total)

    def _proven(self, ticket: Ticket) -> None:
        self._unproven.pop(ticket, None)

    def _release(self, ticket: Ticket) -> None:
        self._unproven.pop(ticket, None)
        held = self._held.get(ticket.key, {})
        held.pop(ticket, None)
        if not held:
            self._held.pop(ticket.key, None)
        self._count -= 1


# Lines any local process can cause per connection or request, as often as it likes: once a
# LOG_EVERY_SECONDS at most, per what they say.
_PACE = LogPace(LOG_EVERY_SECONDS)


def note_now(what: str) -> bool:
    """Whether a line about `what` may be logged now."""
    return _PACE.due(what)


class _MalformedQuiet(logging.Filter):
    """aiohttp's server logs a request it cannot parse (a bad header line: an obs-fold, a control
    character) with a traceback and the offending line, which may hold the session's placeholder,
    as often as anyone sends one. Here: one line naming only the kind of error, once a minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._pace = LogPace(LOG_EVERY_SECONDS, clock)
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # our handler's own failures keep their traceback: they are bugs
        if not self._pace.due():
            self._suppressed += 1
            return False
        record.msg = "session endpoints: a malformed HTTP request was refused with 400 (%s)%s"
        record.args = (type(exc).__name__, f"; {self._suppressed} more since the last such line" if self._suppressed else "")
        record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
        self._suppressed = 0
        return True


# The logger session endpoints' aiohttp servers log to.
SERVER_LOG = logging.getLogger("qpu_broker.forward.session_http")
SERVER_LOG.addFilter(_MalformedQuiet())


class HttpConnection(asyncio.Protocol):
    """aiohttp's request handling for one admitted connection, within the session deadlines.

    The head deadline is aiohttp's keep-alive timer, which runs from the connection's start and
    from each answer's end, and closes the connection if no whole request has come by then (a
    half head counts as none). The body deadline is kept here: aiohttp waits for a body forever.
    """

    def __init__(self, ticket: Ticket, handle: Handle, config: Config) -> None:
        from aiohttp import web

        self._ticket = ticket
        self._handle = handle
        self._idle = config.session_body_idle_seconds
        # access_log=None: a stranger's request must not write lines into our log, nor a path and
        # query of the command's. lingering_time bounds how long an unread body is drained after
        # its answer (aiohttp reads and drops it, so that the client sees the answer).
        # auto_decompress=False: the body goes on as the SDK sent it, its Content-Encoding with it
        # (aiohttp would inflate dwave-cloud-client's deflate uploads and leave the header on).
        self._inner = web.Server(self._serve, access_log=None, keepalive_timeout=config.session_head_seconds,
                                 lingering_time=config.session_body_idle_seconds, logger=SERVER_LOG,
                                 auto_decompress=False)()
        self._transport: asyncio.Transport | None = None
        self._body: asyncio.StreamReader | None = None  # the body of the request being answered
        self._last_byte = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._ticket.attach(transport)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._last_byte = asyncio.get_running_loop().time()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._ticket.release()
        self._inner.connection_lost(exc)

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        from aiohttp import web

        loop = asyncio.get_running_loop()
        self._body, self._last_byte = request.content, loop.time()
        self._timer = loop.call_at(self._last_byte + self._idle, self._check_body)
        try:
            return await self._handle(request)
        except ConnectionError:  # the client went, or was cut off, mid-request: no answer, no traceback
            return web.Response(status=400)  # never sent: the connection is gone
        finally:
            self._body = None
            self._stop_timer()

    def _check_body(self) -> None:
        self._timer = None
        if self._body is None or self._body.is_eof() or self._transport is None:
            return  # read whole (or none): the client now waits for the answer, which may take long
        due = self._last_byte + self._idle
        if asyncio.get_running_loop().time() >= due:
            self._transport.abort()
        else:
            self._timer = asyncio.get_running_loop().call_at(due, self._check_body)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Refused(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        transport.abort()
