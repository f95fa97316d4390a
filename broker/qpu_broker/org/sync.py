"""Keeping the org's copy current: the Watch push stream, read from one server at a time.

Reconnects with back-off, resuming after the revision this copy stands at (a full snapshot
when the server cannot resume). A dead or frozen peer sends no FIN: a stream silent for
several heartbeats is gone (OrgSession.silent_after). When a server does not answer, the next
try goes to the next one (round-robin): switching drops nothing, since the replicas hold the same
token ids and versions, and grace counts from the last contact with any of them. A server that
ends this membership (removed, this device removed or withdrawn) ends the sync, and every org
secret and handle goes at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from qpu_broker_client.errors import (
    ACCESS_EXPIRED_MARK,
    REMOVED_MARK,
    ROLE_CHANGED_MARK,
    QpuBrokerError,
    UnauthenticatedError,
    UnavailableError,
)

from qpu_broker.org.access import OrgAccess
from qpu_broker.org.records import NotThisOrg
from qpu_broker.org.server_api import OrgServerApi, WatchEvents
from qpu_broker.org.session import (
    CONNECTED,
    DISCONNECTED,
    KEY_REVOKED,
    REMOVED,
    OrgSession,
)
from qpu_broker.org.state import OrgState
from qpu_broker.tokens.org_login import OrgLoginStore

log = logging.getLogger(__name__)
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0


def unreachable(exc: BaseException) -> bool:
    """The server did not answer (down, partitioned, frozen): another replica may. One that
    answered with an error would answer the same from any replica (they share one database)."""
    if isinstance(exc, QpuBrokerError):
        return exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and exc.mark != ROLE_CHANGED_MARK
    return isinstance(exc, (TimeoutError, StopAsyncIteration))


def backoff(failures: int, servers: int) -> float:
    """Seconds before the next try: each server is tried again soon after the last contact, so
    a replica takes over at once; every full round of failures doubles the wait."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(8, (failures - 1) // max(1, servers)))


class OrgSync:
    def __init__(self, server: OrgServerApi, session: OrgSession, state: OrgState, access: OrgAccess,
                 login: OrgLoginStore, on_connected: Callable[[], None]) -> None:
        self._server = server
        self._session = session
        self._state = state
        self._access = access
        self._login = login  # where a redeemed login of the release before is saved
        self._on_connected = on_connected  # the stream is up: what was queued while away goes now
        # Set while a login waits for its first sync: done when the org's tokens are here (or never will be).
        self._first_sync: asyncio.Future[None] | None = None

    async def run(self) -> None:
        session, server = self._session, self._server
        failures = 0  # tries since the last message from any server
        while True:
            connected_at: float | None = None
            stream: WatchEvents | None = None
            at = server.current
            try:
                if not server.has_device:
                    await server.redeem_legacy_key(at, self._login.save)
                who = await server.whoami(at)
                if session.org and (who.org, who.user) != (session.org, session.user):
                    # Every listed server must be the same org, and know this key as the same user:
                    # one that does not is not failed over to (a wrong --server, or a look-alike).
                    raise NotThisOrg(f"the org server {server.server} answers for {who.org!r} as {who.user!r}, "
                                     f"not {session.org!r} as {session.user!r}: not used; check the --server list")
                session.member(who)
                self._state.stream_started()
                stream = await server.watch(at, self._state.revision, self._state.store_id)
                while True:
                    event = await asyncio.wait_for(stream.next(), session.silent_after(self._state.heartbeat))
                    connected_at = session.contact()
                    if self._state.foreign(event):
                        raise NotThisOrg(f"the org server {server.server} serves another store of {session.org!r} "
                                         "than before: not used; if the org was set up again, run 'qpu-broker org login'")
                    await self._state.apply(event, server.fetch_secrets)
                    if session.state != CONNECTED and self._state.synced:  # a whole snapshot, or caught up
                        session.state, session.detail = CONNECTED, ""
                        self._on_connected()
                        log.info("organization push stream up at %s: %d org tokens", server.server, len(self._state))
                    if session.state == CONNECTED:
                        self.settle(None)
                    failures = 0
            except asyncio.CancelledError:
                raise
            except (TimeoutError, QpuBrokerError, StopAsyncIteration) as exc:
                if connected_at is not None and not isinstance(exc, TimeoutError):
                    # A stream that broke was live until it broke; a silent one (a frozen
                    # server, a partition) only until its last message, which stays the contact.
                    session.contact()
                if self._ended(exc):
                    self.settle(UnauthenticatedError(f"the organization server {server.server}: {session.detail}"))
                    return
            finally:
                if stream is not None:
                    stream.cancel()  # a stream given up as silent must not linger
            self._access.expire_if_past_grace()
            failures += 1
            await asyncio.sleep(backoff(failures, len(server.servers)))

    def _ended(self, exc: BaseException) -> bool:
        """Record why the stream stopped, and move to the next server when this one does not
        answer; True when the server ended this membership (no failover from that)."""
        session, server = self._session, self._server
        if isinstance(exc, UnauthenticatedError) and exc.mark == ACCESS_EXPIRED_MARK:
            server.expire_access()  # our clock and the server's differ: a new token at the next try
            session.state, session.detail = DISCONNECTED, "getting a new access token"
            return False
        if isinstance(exc, UnauthenticatedError):
            # Removed, or this device removed, expired or withdrawn: drop everything now, and stop
            # knocking with a dead device. Grace is for an unreachable server only.
            self._access.drop()
            server.forget()
            if exc.mark == REMOVED_MARK:
                session.state = REMOVED
                session.detail = f"removed from {session.org or 'the organization at ' + server.server}: ask an org admin"
            else:  # this device removed, expired or withdrawn; or the login's old key used up
                session.state, session.detail = KEY_REVOKED, str(exc)
            log.warning("the organization server ended this membership (%s): every org secret and handle dropped",
                        session.state)
            return True
        if isinstance(exc, QpuBrokerError) and exc.mark == ROLE_CHANGED_MARK:
            session.detail = "role changed: reconnecting"
        elif isinstance(exc, NotThisOrg):
            session.detail = str(exc)
            log.warning("%s", exc)
        elif isinstance(exc, QpuBrokerError):
            session.detail = f"the org server {server.server} is unreachable ({exc.code})"
        else:
            session.detail = f"the org server {server.server} went silent"
        session.state = DISCONNECTED
        if unreachable(exc):
            server.switch()
        return False

    # -- a login's wait for its first sync ------------------------------------------------------
    def expect_first_sync(self) -> None:
        self._first_sync = asyncio.get_running_loop().create_future()

    async def until_usable(self, timeout: float) -> None:
        """A login returns once the push stream has brought the org's tokens (and the secrets of
        cached ones): the caller's next forward or list sees them. Else it says why not."""
        first_sync = self._first_sync
        try:
            await asyncio.wait_for(asyncio.shield(first_sync), timeout)
        except TimeoutError:
            raise UnavailableError(
                f"enrolled in {self._session.org!r} at {self._server.server}, but its push stream is not up after "
                f"{timeout:.0f} s ({self._session.detail or 'no answer yet'}): the daemon keeps trying; see "
                "'qpu-broker org status'") from None
        finally:
            self._first_sync = None

    def settle(self, error: QpuBrokerError | None) -> None:
        """End a login's wait: usable (None), or never going to be (why)."""
        if self._first_sync is not None and not self._first_sync.done():
            if error is None:
                self._first_sync.set_result(None)
            else:
                self._first_sync.set_exception(error)
