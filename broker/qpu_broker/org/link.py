"""The daemon's membership of an organization: login, lock, unlock, logout, and what status shows.

Org token metadata and secrets are held in memory only (never in the local store) and dropped
on logout, on lock, on revocation, when the server says this user was removed or their key
revoked (at once, no grace), and past the grace of an unreachable server (org/access.py). While
logged in and unlocked two tasks run: the sync (org/sync.py) and the usage reporter
(org/usage_reporter.py). Each token carries its org's `Reach`: where its secret may go is the
org's decision alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from qpu_broker_client.errors import InvalidArgumentError, LockedError, UnavailableError

from qpu_broker.common.org_servers import login_id, parse_servers
from qpu_broker.common.reach import check_ca_pem
from qpu_broker.org.access import OrgAccess
from qpu_broker.org.quotas import OrgQuotas
from qpu_broker.org.records import Enrolled, LinkStatus
from qpu_broker.org.secret_cache import SecretCache
from qpu_broker.org.server_api import OrgServerApi
from qpu_broker.org.session import (
    CONNECTED,
    CONNECTING,
    LOCKED,
    NOT_LOGGED_IN,
    OrgSession,
)
from qpu_broker.org.state import OrgState
from qpu_broker.org.sync import OrgSync
from qpu_broker.org.usage_reporter import UsageReporter
from qpu_broker.tokens.events import Event, Locked, Unlocked
from qpu_broker.tokens.org_login import OrgLogin, OrgLoginStore
from qpu_broker.tokens.usage_queue import UsageQueue

log = logging.getLogger(__name__)
LOGIN_SYNC_TIMEOUT = 10.0  # seconds a login waits for its first snapshot (the client waits 30 s in all)


class OrgLink:
    def __init__(self, login: OrgLoginStore, server: OrgServerApi, session: OrgSession, state: OrgState,
                 secrets: SecretCache, access: OrgAccess, quotas: OrgQuotas, sync: OrgSync, reporter: UsageReporter,
                 usage: UsageQueue) -> None:
        self._login = login
        self._server = server
        self._session = session
        self._state = state
        self._secrets = secrets
        self._access = access
        self._quotas = quotas
        self._sync = sync
        self._reporter = reporter
        self._usage = usage
        self._tasks: list[asyncio.Task] = []

    def wipe_secrets(self, event: Event) -> None:
        """At once, on the thread that locked (the cache clears safely from any thread)."""
        if isinstance(event, Locked):
            self._secrets.wipe()

    def on_event(self, event: Event) -> None:
        if isinstance(event, Locked):
            self._locked()
        elif isinstance(event, Unlocked):
            asyncio.get_running_loop().create_task(self.start())

    def reconfigure(self, grace_seconds: float) -> None:
        self._session.grace = grace_seconds

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Connect with the stored login, if there is one and the agent is unlocked."""
        if not self._login.stored():
            return
        if self._login.locked:
            self._session.state = LOCKED
            return
        await self._connect(self._login.read())
        self._run_tasks()

    def _run_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sync.run()), loop.create_task(self._reporter.run())]

    def _stop_tasks(self) -> None:
        self._sync.settle(UnavailableError("the organization login was interrupted (the agent was locked, or logged out)"))
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def _connect(self, login: OrgLogin, current: int = 0, enrolled: Enrolled | None = None) -> None:
        await self._disconnect()
        self._server.connect(login, current, enrolled)
        self._session.state = CONNECTING

    async def _disconnect(self) -> None:
        self._stop_tasks()
        await self._server.close()
        self._access.drop()

    def _locked(self) -> None:
        if self._session.state != NOT_LOGGED_IN:
            log.info("locked: organization secrets dropped from memory")
            self._stop_tasks()
            self._server.forget()  # the device key stays sealed in the store
            self._access.drop()
            self._session.state = LOCKED

    async def login(self, servers: Sequence[str], ca_pem: bytes, code: bytes) -> None:
        """Enroll a new device of this daemon with a member's enrollment code, and use it."""
        servers = parse_servers(servers)
        if not code:
            raise InvalidArgumentError("no enrollment code given: type it at the prompt, or pipe it on stdin")
        if not all(0x21 <= b < 0x7F for b in code):
            raise InvalidArgumentError("an enrollment code is printable ASCII without spaces (qbe_…): check what you "
                                       "pasted")
        if self._login.locked:
            raise LockedError("the agent is locked: unlock it before logging in")
        check_ca_pem(ca_pem, "the CA given (--ca FILE: the org's ca.pem)")  # named, never echoed
        enrolled = await self._server.enroll(servers, ca_pem, code, login_id(servers, self._server.login_id))
        await self._connect(enrolled.login, enrolled.at, enrolled)
        await self._login.save(enrolled.login)
        self._session.member(enrolled.member)
        log.info("logged in to the organization %r at %s as %r (%s), device %s", self._session.org,
                 self._server.server, self._session.user, self._session.role, enrolled.login.device_id)
        self._sync.expect_first_sync()
        self._run_tasks()
        await self._sync.until_usable(LOGIN_SYNC_TIMEOUT)

    async def logout(self) -> None:
        await self._disconnect()
        await self._login.clear()
        self._server.forget(servers=True)
        self._session.logged_out()
        log.info("logged out of the organization server: its secrets are dropped")

    async def close(self) -> None:
        await self._disconnect()

    # -- what clients see ----------------------------------------------------------------
    def require(self) -> None:
        self._access.require()

    async def refresh_quotas(self) -> None:
        await self._quotas.refresh(self._session.state == CONNECTED and any(t.metered for t in self._state.tokens()))

    def status(self) -> LinkStatus:
        self._access.expire_if_past_grace()
        s, tokens = self._session, self._state.tokens()
        waiting = self._usage.waiting(self._server.login_id) if s.state != NOT_LOGGED_IN else 0
        login = self._server.device_login
        return LinkStatus(s.state, self._server.server, s.org, s.user, s.role, len(tokens), s.since_contact(),
                          s.grace, s.detail, waiting, self._quotas.known(),
                          sorted(t.name for t in tokens if t.metered), sorted(t.name for t in tokens if t.relay),
                          list(self._server.servers), sorted(t.name for t in tokens if not t.relay),
                          login.device_id if login else "", login.device_expires_us if login else 0)
