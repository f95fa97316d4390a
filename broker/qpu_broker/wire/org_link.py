"""The daemon's link to an organization server.

Holds org token metadata and secrets in memory only (never in the local
store), keeps them current through the server's Watch push stream (reconnect
with back-off, full resync from the snapshot every time), and hands clients
opaque handles instead of server ids. Secrets are dropped on logout, on lock,
on revocation, when the server says this user was removed or their key revoked
(at once, no grace: grace is only for an unreachable server), and when the
server has been unreachable past the grace period, counted from the last
contact (any message, heartbeats included, or the moment a live stream broke; a
stream gone silent is noticed after SILENT_HEARTBEATS heartbeats, or after the grace
when that is shorter but never before one heartbeat is missed, and counts from its
last message).
A login may name several servers, replicas of one org on one database: the link talks to
one at a time, and when it stops answering (the stream breaks or goes silent, or it is
unavailable) the next attempt goes to the next one, round-robin. Switching drops nothing:
the replicas hold the same token ids and versions, and grace counts from the last contact
with any of them.
Each token carries its org's `Reach`: where its secret may go is the org's
decision alone. Admin operations are passed to the server as this member's
device (`org_device`: an access token its key signed for): the server decides who may.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import grpc
from qpu_broker_client.error_mapping import ERROR_MARK_KEY
from qpu_broker_client.errors import (
    ACCESS_EXPIRED_MARK,
    REMOVED_MARK,
    ROLE_CHANGED_MARK,
    FailedPreconditionError,
    InvalidArgumentError,
    LockedError,
    NotFoundError,
    QpuBrokerError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    error_for_code,
)
from qpu_broker_client.org_messages import quota_from_proto, usage_report
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2, org_pb2_grpc
from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import Quota

from qpu_broker.common.custom_providers import CustomDefinition, definition_from_json
from qpu_broker.common.hardening import LockedSecrets
from qpu_broker.common.lifetimes import expiry_text
from qpu_broker.common.names import canonical_name
from qpu_broker.common.org_limits import (
    FETCH_IDS_MAX,
    RELAY_BODY_MAX,
    RELAY_MESSAGE_MAX,
)
from qpu_broker.common.org_servers import login_id, parse_servers
from qpu_broker.common.reach import Owner, Reach, check_ca_pem, merge
from qpu_broker.forward.forwarder import ForwardCall, LunaFill, Reply, SignCall
from qpu_broker.keys import device_key
from qpu_broker.tokens.events import Event, Locked, Unlocked
from qpu_broker.tokens.org_expiry import OrgExpiry
from qpu_broker.tokens.org_login import OrgLogin, OrgLoginStore
from qpu_broker.tokens.org_tokens import (
    CONNECTED,
    CONNECTING,
    DISCONNECTED,
    KEY_REVOKED,
    LOCKED,
    NOT_LOGGED_IN,
    REMOVED,
    UNAVAILABLE,
    LinkStatus,
    OrgToken,
)
from qpu_broker.tokens.usage_queue import Login, UsageQueue
from qpu_broker.wire.org_device import DeviceAccess, enroll_request, enrolled_login
from qpu_broker.wire.org_tls import diagnose
from qpu_broker.wire.proto_values import header_pairs, micros, reach_from_proto

log = logging.getLogger(__name__)
CALL_TIMEOUT = 10.0
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0
# A stream silent for this many heartbeat periods is dead (a partition sends no FIN).
SILENT_HEARTBEATS = 3
HEARTBEAT_SLACK = 1.0  # seconds a heartbeat may be late before a short grace counts it missed
DEFAULT_HEARTBEAT = 5.0
LOGIN_SYNC_TIMEOUT = CALL_TIMEOUT  # seconds a login waits for its first snapshot (the client waits 30 s in all)
_ORG_ONLY = Reach(owner=Owner.ORG)  # the official hosts and nothing else
QUOTA_STATUS_TIMEOUT = 1.0  # seconds status waits for the server's word on quotas
QUOTA_REFRESH = 1.0  # seconds between status's questions about quotas
RELAY_TIMEOUT = 300.0  # a relayed forward waits on the provider too (the server applies the call's own timeout)
USAGE_BATCH = 500  # records per report (the server takes up to 1000)
USAGE_LINGER = 0.25  # seconds a first record waits for others to go in the same report
USAGE_RETRY_MAX = 60.0  # seconds between tries of a report the server refused
# Reads tried once more on the next server when the first is unavailable: any replica answers
# them alike and asking twice changes nothing. Nothing else is: a relayed call, a reservation
# or a token change may have happened on the first server before it went away.
RETRIED_READS = frozenset({"WhoAmI", "ListTokens", "FetchSecrets", "ListQuotas", "ListUsage"})


def _reach(msg: org_pb2.Reach, where: str) -> Reach:
    """The org's Reach, checked as strictly as our own config; a bad one is the official hosts only."""
    try:
        return reach_from_proto(msg, where)
    except InvalidArgumentError as exc:
        log.warning("ignoring the org's settings for %s: %s", where, exc)
        return _ORG_ONLY


def _mark(exc: grpc.aio.AioRpcError) -> str:
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_MARK_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


def _open_channel(server: str, ca_pem: bytes) -> grpc.aio.Channel:
    # A name with several addresses needs nothing more: grpc's dns resolver gives pick_first
    # all of them, and a channel that lost its connection re-resolves and tries each in turn.
    return grpc.aio.secure_channel(server, grpc.ssl_channel_credentials(ca_pem or None), options=[
        ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.max_receive_message_length", RELAY_MESSAGE_MAX), ("grpc.max_send_message_length", RELAY_MESSAGE_MAX)])


def _unreachable(exc: BaseException) -> bool:
    """The server did not answer (down, partitioned, frozen): another replica may. One that
    answered with an error would answer the same from any replica (they share one database)."""
    if isinstance(exc, QpuBrokerError):
        return exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and exc.mark != ROLE_CHANGED_MARK
    return isinstance(exc, (TimeoutError, StopAsyncIteration))


def _backoff(failures: int, servers: int) -> float:
    """Seconds before the next try: each server is tried again soon after the last contact, so
    a replica takes over at once; every full round of failures doubles the wait."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(8, (failures - 1) // max(1, servers)))


_ROLES = {org_pb2.ROLE_ADMIN: "admin", org_pb2.ROLE_MEMBER: "member", org_pb2.ROLE_SERVICE: "service"}
LEGACY_KEY_MARK = "legacy-key-used"  # ours only: a login of the release before whose key no longer works


class NotThisOrg(UnavailableError):
    """A listed server that is not the org this daemon's copy came from: not used, the next is tried."""


class OrgLink:
    def __init__(self, login: OrgLoginStore, grace_seconds: float, forget_derived: Callable[[str], None], usage: UsageQueue,
                 monotonic: Callable[[], float] = time.monotonic, clock: Callable[[], float] = time.time) -> None:
        self._login = login
        # Records of org token use, sent to the server while connected (`_report`).
        self._usage = usage
        self._usage_ready = asyncio.Event()
        usage.on_queued = self._usage_ready.set
        self._sender: asyncio.Task | None = None
        self._grace = grace_seconds
        # Drops what was derived from org secrets (exchanged bearers, SigV4 signing keys),
        # by cache-key prefix, whenever the org secrets themselves are dropped.
        self._forget_derived = forget_derived
        self._monotonic = monotonic
        # Part of every org cache key, new after every drop: nothing derived under one
        # login, membership or server can be reached again under another.
        self._epoch = os.urandom(8).hex()
        self._handle_key = os.urandom(32)  # handles change with every daemon start: short-lived by design
        self._servers: tuple[str, ...] = ()
        self._current = 0  # the index of the server the link talks to
        self._login_id = ""  # what usage records are queued under (common/org_servers.login_id)
        self._ca_pem = b""
        self._device: DeviceAccess | None = None  # None: no login, or one of the release before not redeemed yet
        self._legacy_key: Secret | None = None  # that release's API key, redeemed once for a device
        self._stubs: dict[int, tuple[grpc.aio.Channel, org_pb2_grpc.OrgServiceStub]] = {}  # opened when first used
        self._task: asyncio.Task | None = None
        # Set while a login waits for its first sync: done when the org's tokens are here (or never will be).
        self._first_sync: asyncio.Future[None] | None = None
        self._tokens: dict[str, OrgToken] = {}  # by server id
        # server id -> the secret (in mlock'ed pages, wiped when dropped) and its version
        self._secrets: LockedSecrets[str, int] = LockedSecrets()
        self._by_handle: dict[str, str] = {}
        self._by_name: dict[str, str] = {}  # a forward looks its token up twice (reach, then secret)
        self._expiry = OrgExpiry(clock, self._expired)  # drops a token's secret at the org's end for it
        self._org_reach: dict[str, Reach] = {}
        # The custom providers the org defines: its tokens of them use these, never this daemon's config.
        self._custom: dict[str, CustomDefinition] = {}
        # Where this daemon's copy of the org stands: a reconnect (to any replica) resumes after it.
        self._revision, self._store_id = 0, ""
        self._pages: list[org_pb2.OrgToken] = []  # a snapshot's pages so far (applied at its last)
        self._synced = False  # this stream has brought the copy up to date
        self._quotas: dict[int, Quota] = {}  # by quota id, as last heard (reserve, status)
        self._quotas_asked = float("-inf")
        self._state = NOT_LOGGED_IN
        self._detail = ""
        self._last_contact: float | None = None
        self._heartbeat = DEFAULT_HEARTBEAT
        self.org = self.user = self.role = ""

    def wipe_secrets(self, event: Event) -> None:
        """At once, on the thread that locked (a LockedSecrets clears safely from any thread)."""
        if isinstance(event, Locked):
            self._secrets.clear()

    def on_event(self, event: Event) -> None:
        if isinstance(event, Locked):
            self._locked()
        elif isinstance(event, Unlocked):
            asyncio.get_running_loop().create_task(self.start())

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Connect with the stored login, if there is one and the agent is unlocked."""
        if not self._login.stored():
            return
        if self._login.locked:
            self._state = LOCKED
            return
        await self._connect(self._login.read())
        self._run_tasks()

    def _run_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._watch())
        self._sender = loop.create_task(self._report())

    def _stop_tasks(self) -> None:
        self._settle(UnavailableError("the organization login was interrupted (the agent was locked, or logged out)"))
        for task in (self._task, self._sender):
            if task is not None:
                task.cancel()
        self._task = self._sender = None

    async def _connect(self, login: OrgLogin, current: int = 0) -> None:
        await self._disconnect()
        self._servers, self._login_id, self._ca_pem = login.servers, login.login_id, login.ca_pem
        self._device = DeviceAccess(login, self._monotonic) if login.device_key is not None else None
        self._legacy_key = login.legacy_key
        self._current = current
        self._state = CONNECTING

    @property
    def _server(self) -> str:
        """The server the link talks to now (or tries next)."""
        return self._servers[self._current] if self._servers else ""

    def _stub(self, at: int) -> org_pb2_grpc.OrgServiceStub:
        if at not in self._stubs:
            channel = _open_channel(self._servers[at], self._ca_pem)
            self._stubs[at] = channel, org_pb2_grpc.OrgServiceStub(channel)
        return self._stubs[at][1]

    def _switch(self) -> None:
        """The next attempt goes to the next server (round-robin). The channel to the one left
        stays open, idle (that costs nothing), for when its turn comes again."""
        if len(self._servers) > 1:
            self._current = (self._current + 1) % len(self._servers)
            log.info("trying the organization server %s next", self._server)

    async def _enroll_any(self, servers: Sequence[str], ca_pem: bytes,
                          request: org_pb2.EnrollRequest) -> tuple[int, org_pb2.EnrollResponse]:
        """Enroll at the first server, in order, that answers (any other answer, a refused code
        above all, ends it there: the replicas would all say the same)."""
        unreachable: list[str] = []
        for at, server in enumerate(servers):
            try:
                return at, await self._enroll(server, ca_pem, request)
            except UnavailableError as exc:
                unreachable.append(str(exc))
        raise UnavailableError(unreachable[0] if len(unreachable) == 1 else
                               "no organization server answers: " + "; ".join(unreachable))

    async def _enroll(self, server: str, ca_pem: bytes, request: org_pb2.EnrollRequest) -> org_pb2.EnrollResponse:
        """On a channel of its own: a failed login leaves a working one untouched."""
        channel = grpc.aio.secure_channel(server, grpc.ssl_channel_credentials(ca_pem or None))
        try:
            return await org_pb2_grpc.OrgServiceStub(channel).Enroll(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            details = (exc.details() or "").removeprefix("qpu-broker: ")
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                cause = await asyncio.to_thread(diagnose, server, ca_pem)
                raise UnavailableError(cause or f"the organization server {server} is unavailable: {details}") from None
            raise error_for_code(exc.code().name, details, _mark(exc)) from None
        finally:
            await channel.close()

    async def _disconnect(self) -> None:
        self._stop_tasks()
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()
        self._drop()

    def _drop(self) -> None:
        self._tokens.clear()
        self._secrets.clear()
        self._expiry.clear()
        self._by_handle.clear()
        self._by_name.clear()
        self._org_reach.clear()
        self._custom = {}
        self._revision, self._store_id = 0, ""
        self._quotas.clear()
        self._epoch = os.urandom(8).hex()
        self._forget_derived("org:")

    def cache_key(self, token: OrgToken) -> str:
        """What derived credentials of this token are cached under (never reused across drops)."""
        return f"org:{self._epoch}:{token.server_id}:{token.version}"

    def _locked(self) -> None:
        if self._state != NOT_LOGGED_IN:
            log.info("locked: organization secrets dropped from memory")
            self._stop_tasks()
            self._device = self._legacy_key = None  # the device key stays sealed in the store
            self._drop()
            self._state = LOCKED

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
        private_key = device_key.new_private_key()
        at, reply = await self._enroll_any(servers, ca_pem, enroll_request(code, private_key))
        login = enrolled_login(servers, login_id(servers, self._login_id), ca_pem, private_key, reply)
        await self._connect(login, at)
        self._device.take(reply.access_token, reply.access_expires, servers[at])
        await self._login.save(login)
        self._whoami(reply)
        log.info("logged in to the organization %r at %s as %r (%s), device %s", self.org, self._server, self.user,
                 self.role, login.device_id)
        self._first_sync = asyncio.get_running_loop().create_future()
        self._run_tasks()
        await self._until_usable()

    async def _until_usable(self) -> None:
        """A login returns once the push stream has brought the org's tokens (and the secrets of
        cached ones): the caller's next forward or list sees them. Else it says why not."""
        first_sync = self._first_sync
        try:
            await asyncio.wait_for(asyncio.shield(first_sync), LOGIN_SYNC_TIMEOUT)
        except TimeoutError:
            raise UnavailableError(
                f"enrolled in {self.org!r} at {self._server}, but its push stream is not up after {LOGIN_SYNC_TIMEOUT:.0f} s"
                f" ({self._detail or 'no answer yet'}): the daemon keeps trying; see 'qpu-broker org status'") from None
        finally:
            self._first_sync = None

    def _settle(self, error: QpuBrokerError | None) -> None:
        """End a login's wait: usable (None), or never going to be (why)."""
        if self._first_sync is not None and not self._first_sync.done():
            if error is None:
                self._first_sync.set_result(None)
            else:
                self._first_sync.set_exception(error)

    async def _redeem_legacy_key(self, at: int) -> None:
        """A login of the release before holds an API key: the server kept it as a one-use code,
        so it is redeemed once for a device of this daemon, and the key leaves the store."""
        private_key = device_key.new_private_key()
        try:
            reply = await self._stub(at).Enroll(enroll_request(self._legacy_key.reveal(), private_key),
                                                timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            error = self._error(at, exc)
            if isinstance(error, UnauthenticatedError) and error.mark != REMOVED_MARK:
                raise UnauthenticatedError("this login's key no longer works: ask an org admin for an enrollment code "
                                           "and run qpu-broker org login", mark=LEGACY_KEY_MARK) from None
            raise error from None
        login = enrolled_login(self._servers, self._login_id, self._ca_pem, private_key, reply)
        await self._login.save(login)
        self._device, self._legacy_key = DeviceAccess(login, self._monotonic), None
        self._device.take(reply.access_token, reply.access_expires, self._servers[at])
        log.info("the organization login of the release before now is device %s (its API key was used up)",
                 login.device_id)

    async def logout(self) -> None:
        await self._disconnect()
        await self._login.clear()
        self._state, self._device, self._legacy_key = NOT_LOGGED_IN, None, None
        self.org, self.user, self.role = "", "", ""
        self._servers, self._current, self._login_id, self._ca_pem = (), 0, "", b""
        log.info("logged out of the organization server: its secrets are dropped")

    async def close(self) -> None:
        await self._disconnect()

    def _whoami(self, who: org_pb2.WhoAmIResponse | org_pb2.EnrollResponse) -> None:
        self.org, self.user = who.org, who.user
        self.role = _ROLES.get(who.role, "member")

    # -- the push stream ---------------------------------------------------------------
    async def _watch(self) -> None:
        failures = 0  # tries since the last message from any server
        while True:
            connected_at: float | None = None
            call = None
            at = self._current
            try:
                if self._device is None:
                    await self._redeem_legacy_key(at)
                who = await self._call_at(at, "WhoAmI", org_pb2.WhoAmIRequest())
                if self.org and (who.org, who.user) != (self.org, self.user):
                    # Every listed server must be the same org, and know this key as the same user:
                    # one that does not is not failed over to (a wrong --server, or a look-alike).
                    raise NotThisOrg(f"the org server {self._server} answers for {who.org!r} as {who.user!r}, "
                                           f"not {self.org!r} as {self.user!r}: not used; check the --server list")
                self._whoami(who)
                self._pages, self._synced = [], False
                call = self._stub(at).Watch(org_pb2.WatchRequest(after_revision=self._revision, store_id=self._store_id),
                                            metadata=await self._bearer(at))
                stream = call.__aiter__()
                while True:
                    # A dead or frozen peer sends no FIN: a stream silent for several heartbeats is
                    # gone, or sooner when the grace is shorter (never before one heartbeat is missed).
                    silent = max(self._heartbeat + HEARTBEAT_SLACK, min(SILENT_HEARTBEATS * self._heartbeat, self._grace))
                    event = await asyncio.wait_for(stream.__anext__(), silent)
                    connected_at = self._last_contact = self._monotonic()
                    await self._apply(event)
                    if self._state != CONNECTED and self._synced:  # a whole snapshot, or caught up
                        self._state, self._detail = CONNECTED, ""
                        self._usage_ready.set()  # what was queued while away goes now
                        log.info("organization push stream up at %s: %d org tokens", self._server, len(self._tokens))
                    if self._state == CONNECTED:
                        self._settle(None)
                    failures = 0
            except asyncio.CancelledError:
                raise
            except (TimeoutError, grpc.aio.AioRpcError, QpuBrokerError, StopAsyncIteration) as exc:
                if connected_at is not None and not isinstance(exc, TimeoutError):
                    # A stream that broke was live until it broke; a silent one (a frozen
                    # server, a partition) only until its last message, which stays the contact.
                    self._last_contact = self._monotonic()
                if self._ended(exc):
                    self._settle(UnauthenticatedError(f"the organization server {self._server}: {self._detail}"))
                    return
            finally:
                if call is not None:
                    call.cancel()  # a stream given up as silent must not linger
            self._expire_if_past_grace()
            failures += 1
            await asyncio.sleep(_backoff(failures, len(self._servers)))

    def _ended(self, exc: BaseException) -> bool:
        """Record why the stream stopped, and move to the next server when this one does not
        answer; True when the server ended this membership (no failover from that)."""
        if isinstance(exc, grpc.aio.AioRpcError):
            exc = error_for_code(exc.code().name, (exc.details() or "").removeprefix("qpu-broker: "), _mark(exc))
        if isinstance(exc, UnauthenticatedError) and exc.mark == ACCESS_EXPIRED_MARK:
            if self._device is not None:  # our clock and the server's differ: a new token at the next try
                self._device.expire()
            self._state, self._detail = DISCONNECTED, "getting a new access token"
            return False
        if isinstance(exc, UnauthenticatedError):
            # Removed, or this device removed, expired or withdrawn: drop everything now, and stop
            # knocking with a dead device. Grace is for an unreachable server only.
            self._drop()
            self._device = self._legacy_key = None
            if exc.mark == REMOVED_MARK:
                self._state, self._detail = REMOVED, f"removed from {self.org or 'the organization at ' + self._server}: ask an org admin"
            else:  # this device removed, expired or withdrawn; or the login's old key used up
                self._state, self._detail = KEY_REVOKED, str(exc)
            log.warning("the organization server ended this membership (%s): every org secret and handle dropped",
                        self._state)
            return True
        if isinstance(exc, QpuBrokerError) and exc.mark == ROLE_CHANGED_MARK:
            self._detail = "role changed: reconnecting"
        elif isinstance(exc, NotThisOrg):
            self._detail = str(exc)
            log.warning("%s", exc)
        elif isinstance(exc, QpuBrokerError):
            self._detail = f"the org server {self._server} is unreachable ({exc.code})"
        else:
            self._detail = f"the org server {self._server} went silent"
        self._state = DISCONNECTED
        if _unreachable(exc):
            self._switch()
        return False

    async def _apply(self, event: org_pb2.WatchEvent) -> None:
        kind = event.kind
        if kind == org_pb2.WatchEvent.KIND_HEARTBEAT:
            return
        if kind == org_pb2.WatchEvent.KIND_DELETED:
            for t in event.tokens:
                self._forget(t.id)
                log.info("organization token %r revoked: dropped", t.name)
            self._revision = max(self._revision, event.revision)
            return
        if kind in (org_pb2.WatchEvent.KIND_SNAPSHOT, org_pb2.WatchEvent.KIND_CAUGHT_UP):
            self._heartbeat = event.heartbeat_seconds or DEFAULT_HEARTBEAT
        if kind == org_pb2.WatchEvent.KIND_CAUGHT_UP:
            self._revision, self._store_id, self._synced = event.revision, event.store_id, True
            return
        tokens = list(event.tokens)
        if kind == org_pb2.WatchEvent.KIND_SNAPSHOT:
            if self._store_id and event.store_id and event.store_id != self._store_id:
                # Another store than the one this copy came from (the org re-created, or a server
                # that is not a replica of it): nothing of it is mixed in; a new login starts afresh.
                raise NotThisOrg(f"the org server {self._server} serves another store of {self.org!r} than "
                                       "before: not used; if the org was set up again, run 'qpu-broker org login'")
            if event.more:
                self._pages += tokens
                return
            tokens, self._pages = self._pages + tokens, []
            self._org_reach = {p: _reach(r, f"org-wide {p}") for p, r in event.org_reach.items()}
            self._define(event.custom_providers)
        fresh = {t.id: self._token(t) for t in tokens}
        # Fetch new secrets first, then switch metadata and secret together: a caller
        # sees the old version or the new one, never a version without its secret.
        # A relay token's secret never leaves the server: none is fetched, and one held before goes.
        # An expired token's secret is not asked for either (the server leaves it out anyway).
        fetched = await self._fetch([i for i, t in fresh.items() if not t.relay and not self._expiry.expired(t)
                                     and (self._secrets.meta(i) or 0) < t.version])
        if kind == org_pb2.WatchEvent.KIND_SNAPSHOT:
            for gone in set(self._tokens) - set(fresh):
                self._forget(gone)
        for server_id, token in fresh.items():
            if server_id in fetched:
                version, secret = fetched[server_id]
                self._secrets.put(server_id, secret.reveal(), version)
            if token.relay or self._expiry.expired(token):
                self._secrets.pop(server_id)
            old = self._tokens.get(server_id)
            if old is not None and old.version != token.version:  # rotated: its old bearer goes too
                self._forget_derived(f"org:{self._epoch}:{server_id}:")
            if old is not None and self._by_name.get(old.name) == server_id:
                del self._by_name[old.name]  # renamed
            self._tokens[server_id] = token
            self._by_handle[token.handle] = server_id
            self._by_name[token.name] = server_id
            self._expiry.arm(token)
        self._revision = max(self._revision, event.revision) if kind != org_pb2.WatchEvent.KIND_SNAPSHOT else event.revision
        if kind == org_pb2.WatchEvent.KIND_SNAPSHOT:
            self._store_id, self._synced = event.store_id, True

    def _define(self, pushed: Mapping[str, str]) -> None:
        """The org's custom providers, from a snapshot, each checked as this daemon's own config is (a
        bad one is left out: its tokens are refused). What was derived from tokens of a provider
        redefined or removed (exchanged bearers) goes: the next call uses the definition as it is now."""
        custom = {}
        for name, text in pushed.items():
            try:
                custom[name] = definition_from_json(name, text, f"the org's custom provider {name[:40]!r}")
            except InvalidArgumentError as exc:
                log.warning("ignoring %s", exc)
        changed = {n for n in {*custom, *self._custom} if custom.get(n) != self._custom.get(n)}
        for server_id, token in self._tokens.items():
            if token.provider in changed:
                self._forget_derived(f"org:{self._epoch}:{server_id}:")
        if changed:
            log.info("the organization's custom providers changed: %s", ", ".join(sorted(changed)))
        self._custom = custom

    def custom_providers(self) -> Mapping[str, CustomDefinition]:
        """The custom providers the org defines, as last heard (a new mapping whenever they change)."""
        return self._custom

    def _forget(self, server_id: str) -> None:
        token = self._tokens.pop(server_id, None)
        self._secrets.pop(server_id)
        self._expiry.cancel(server_id)
        self._forget_derived(f"org:{self._epoch}:{server_id}:")
        if token is not None:
            self._by_handle.pop(token.handle, None)
            if self._by_name.get(token.name) == server_id:
                del self._by_name[token.name]

    async def _fetch(self, ids: list[str]) -> dict[str, tuple[int, Secret]]:
        fetched = {}
        for start in range(0, len(ids), FETCH_IDS_MAX):  # bounded answers, however many tokens the org has
            reply = await self._call("FetchSecrets", org_pb2.FetchSecretsRequest(ids=ids[start:start + FETCH_IDS_MAX]))
            fetched.update({s.id: (s.version, Secret(s.secret)) for s in reply.secrets})
        return fetched

    def _token(self, t: org_pb2.OrgToken) -> OrgToken:
        handle = "org_" + hmac.new(self._handle_key, t.id.encode(), hashlib.sha256).hexdigest()[:24]
        where = f"org token {t.name!r}"
        if t.HasField("reach"):  # a server that sends the effective reach with each token
            reach = _reach(t.reach, where)
        else:  # the org-wide settings came once, with the snapshot: merged here
            reach = merge(self._org_reach.get(t.provider, _ORG_ONLY), _reach(t.own, where))
        return OrgToken(handle, t.id, t.name, t.provider, t.version, reach, micros(t.created_at), micros(t.updated_at),
                        t.metered, t.relay, micros(t.expires_at) if t.HasField("expires_at") else 0)

    def _expired(self, server_id: str) -> None:
        """A token's end came (OrgExpiry's timer): its secret and what was derived from it go; it
        stays listed, and `find` refuses its use."""
        token = self._tokens.get(server_id)
        if token is not None and self._secrets.meta(server_id) is not None:
            log.info("organization token %r expired at %s: its secret dropped", token.name, expiry_text(token.expires_us))
        self._secrets.pop(server_id)
        self._forget_derived(f"org:{self._epoch}:{server_id}:")

    def _expire_if_past_grace(self) -> None:
        if self._state not in (DISCONNECTED, UNAVAILABLE):
            return
        since = float("inf") if self._last_contact is None else self._monotonic() - self._last_contact
        if since > self._grace:
            if self._tokens or self._secrets:
                log.warning("organization server unreachable past the grace period (%.0f s): org secrets dropped",
                            self._grace)
                self._drop()
            self._state = UNAVAILABLE

    # -- the usage record ----------------------------------------------------------------
    def login_id(self) -> Login:
        """Whose records are made now: the login (whichever replica is connected) and the member
        (records go under it only)."""
        return self._login_id, self.user

    async def _report(self) -> None:
        """Send this login's queued records while connected, oldest first, at least once (the server
        keeps one per id, so a resend after a lost answer is harmless); each is deleted here only
        once the server has it."""
        retry = BACKOFF_FIRST
        while True:
            batch = self._usage.to_send(self.login_id(), USAGE_BATCH) if self._state == CONNECTED else []
            if not batch:
                self._usage_ready.clear()
                try:
                    await asyncio.wait_for(self._usage_ready.wait(), 1.0)
                except TimeoutError:
                    continue
                # Records come in bursts: a moment's wait sends them in one report, not one each
                # (they are on disk already, so waiting loses nothing).
                await asyncio.sleep(USAGE_LINGER)
                continue
            try:
                await self._call("ReportUsage", usage_report(batch))
            except QpuBrokerError as exc:
                log.warning("usage records not sent to the organization server yet (%d waiting, kept on disk): %s",
                            self._usage.waiting(self._login_id), exc)
                await asyncio.sleep(retry)
                retry = min(USAGE_RETRY_MAX, retry * 2)
                continue
            self._usage.sent([r.id for r in batch])
            await asyncio.to_thread(self._usage.checkpoint)  # its fsyncs off the event loop
            retry = BACKOFF_FIRST

    async def usage(self, request: org_pb2.ListUsageRequest) -> org_pb2.ListUsageResponse:
        """The org server's usage record, read with this member's key (the server decides what they see)."""
        self._require()
        return await self._call("ListUsage", request)

    async def admin_quota(self, method: str, request):
        """Quotas read (ListQuotas) or, by admins, set (SetQuota, RemoveQuota) with this device's
        key: luna-quantum's time-quota calls. The server decides who may."""
        self._require()
        return await self._call(method, request)

    # -- calls to the server -----------------------------------------------------------
    async def _bearer(self, at: int) -> tuple[tuple[str, str], ...]:
        """The device's access token (got from server `at` when it has none fresh) as call metadata."""
        if self._device is None:
            raise FailedPreconditionError("not logged in to an organization server: run 'qpu-broker org login'")
        return await self._device.metadata(self._stub(at), self._servers[at])

    async def _call(self, method: str, request, timeout: float = CALL_TIMEOUT):
        """A call to the current server; a read it cannot answer is asked of the next one, once."""
        if not self._servers:
            self._require()
        at = self._current
        try:
            return await self._call_at(at, method, request, timeout)
        except UnavailableError:
            if method not in RETRIED_READS or len(self._servers) < 2:
                raise
        return await self._call_at((at + 1) % len(self._servers), method, request, timeout)

    async def _call_at(self, at: int, method: str, request, timeout: float = CALL_TIMEOUT):
        """A call as this device. An access token the server calls expired (its clock ahead of
        ours) is replaced and the call made once more, whatever it is: a call refused at
        authentication was not run."""
        for last in (False, True):
            try:
                metadata = await self._bearer(at)
                return await getattr(self._stub(at), method)(request, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                error = self._error(at, exc)
            if last or error.mark != ACCESS_EXPIRED_MARK or self._device is None:
                raise error
            self._device.expire()
        raise AssertionError("not reached")

    def _error(self, at: int, exc: grpc.aio.AioRpcError) -> QpuBrokerError:
        details = (exc.details() or "").removeprefix("qpu-broker: ")
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            details = f"the organization server {self._servers[at]} is unavailable: {details}"
        return error_for_code(exc.code().name, details, _mark(exc))

    def _require(self) -> None:
        if self._state == NOT_LOGGED_IN:
            raise FailedPreconditionError(
                "organization tokens need an organization server, and this daemon is not logged in to one: "
                "run 'qpu-broker org login --server HOST:PORT'")
        if self._state == LOCKED or self._login.locked:
            raise LockedError("the agent is locked: organization tokens are usable again after 'qpu-broker unlock'")
        if self._state in (REMOVED, KEY_REVOKED):
            raise UnauthenticatedError(f"the organization server {self._server}: {self._detail}")

    # -- what clients see ----------------------------------------------------------------
    def status(self) -> LinkStatus:
        self._expire_if_past_grace()
        since = 0.0 if self._last_contact is None else self._monotonic() - self._last_contact
        waiting = self._usage.waiting(self._login_id) if self._state != NOT_LOGGED_IN else 0
        login = self._device.login if self._device is not None else None
        return LinkStatus(self._state, self._server, self.org, self.user, self.role, len(self._tokens), since,
                          self._grace, self._detail, waiting, list(self._quotas.values()),
                          sorted(t.name for t in self._tokens.values() if t.metered),
                          sorted(t.name for t in self._tokens.values() if t.relay), list(self._servers),
                          sorted(t.name for t in self._tokens.values() if not t.relay),
                          login.device_id if login else "", login.device_expires_us if login else 0)

    # -- relay tokens: the server forwards and signs ---------------------------------------
    async def relay_forward(self, token: OrgToken | None, call: ForwardCall, body: bytes,
                            luna: LunaFill | None = None) -> Reply:
        """`token`: the call's own relay token (None: a Luna call whose key is `luna.own_key`)."""
        self._require()
        if len(body) > RELAY_BODY_MAX:
            names = [t.name for t in (token, *(luna.relayed.values() if luna else ())) if t is not None]
            raise ResourceExhaustedError(f"this request uses relay organization tokens ({', '.join(map(repr, names))}), "
                                         f"whose requests carry at most {RELAY_BODY_MAX} bytes of body through the org server")
        request = org_pb2.RelayForwardRequest(
            token_id=token.server_id if token else "", provider=call.provider, method=call.method, url=call.url,
            headers=[org_pb2.RelayHeader(name=k, value=v) for k, v in call.headers], body=body,
            timeout_seconds=call.timeout, region=call.region, service=call.service)
        if luna is not None:
            request.luna_qpu_tokens.update({field: t.server_id for field, t in luna.relayed.items()})
            if luna.own_key is not None:
                request.luna_api_key = luna.own_key.reveal()
        with self._counted_on_the_server([token, *(luna.relayed.values() if luna else ())]):
            reply = await self._call("RelayForward", request, timeout=RELAY_TIMEOUT)

        async def once():
            yield reply.body

        return Reply(reply.status, header_pairs(reply.headers), reply.http_version or "HTTP/1.1", once())

    async def relay_sign(self, token: OrgToken, call: SignCall) -> list[tuple[str, str]]:
        self._require()
        with self._counted_on_the_server([token]):
            reply = await self._call("RelaySign", org_pb2.RelaySignRequest(
                token_id=token.server_id, provider=call.provider, method=call.method, url=call.url,
                headers=[org_pb2.RelayHeader(name=k, value=v) for k, v in call.headers], body_sha256=call.body_sha256,
                body_bytes=call.body_bytes, region=call.region, service=call.service))
        return header_pairs(reply.headers)

    @contextlib.contextmanager
    def _counted_on_the_server(self, tokens: list[OrgToken | None]) -> Iterator[None]:
        """A relayed call counts its metered tokens' quotas on the server, with no Reserve answer
        here to tell: the next status asks the server again rather than show the use before it."""
        try:
            yield
        finally:
            if any(t is not None and t.metered for t in tokens):
                self._quotas_asked = float("-inf")

    # -- quotas ----------------------------------------------------------------------------
    async def reserve(self, token: OrgToken) -> str:
        """Before a use of a metered token: the server counts it or refuses it. Fails closed: a
        quota that cannot be counted (the server unreachable) refuses the use. Returns the
        reservation the use's record names ("" when the server made none)."""
        try:
            reply = await self._call("Reserve", org_pb2.ReserveRequest(token_id=token.server_id))
        except UnavailableError:
            raise UnavailableError(
                f"organization token {token.name!r} has a quota, and the organization server {self._server} cannot "
                "count this use now: try again when it answers") from None
        for q in reply.quotas:
            self._quotas[q.id] = quota_from_proto(q)
        return reply.reservation

    async def refresh_quotas(self) -> None:
        """The member's quotas and their use, for status: asked of the server only when a quota binds
        one of their tokens, at most once a QUOTA_REFRESH (a status bar polls; each use's reserve
        brings the news too). Best effort: the last known stay."""
        now = self._monotonic()
        if (self._state != CONNECTED or not any(t.metered for t in self._tokens.values())
                or now - self._quotas_asked < QUOTA_REFRESH):
            return
        self._quotas_asked = now
        try:
            reply = await asyncio.wait_for(self._call("ListQuotas", org_pb2.ListQuotasRequest()), QUOTA_STATUS_TIMEOUT)
        except (QpuBrokerError, TimeoutError):
            return
        self._quotas = {q.id: quota_from_proto(q) for q in reply.quotas}

    def reconfigure(self, grace_seconds: float) -> None:
        self._grace = grace_seconds

    def provider_reach(self, provider: str) -> Reach:
        """The org-wide settings for `provider` (official hosts only when the org set none)."""
        return self._org_reach.get(provider, _ORG_ONLY)

    def tokens(self, provider: str = "") -> list[OrgToken]:
        if self._state in (NOT_LOGGED_IN, LOCKED, REMOVED, KEY_REVOKED):
            return []
        self._expire_if_past_grace()
        return [t for t in self._tokens.values() if not provider or t.provider == provider]

    def find(self, *, handle: str = "", name: str = "") -> OrgToken:
        self._require()
        self._expire_if_past_grace()
        if self._state == CONNECTING:
            raise UnavailableError(f"still connecting to the organization server {self._server}: try again in a moment")
        if self._state == UNAVAILABLE:
            several = len(self._servers) > 1
            raise UnavailableError(f"the organization server{'s' if several else ''} {', '.join(self._servers)} "
                                   f"{'have' if several else 'has'} been unreachable for longer than the grace period "
                                   f"({self._grace:.0f} s): org tokens are unavailable until {'one' if several else 'it'} is back")
        server_id = self._by_handle.get(handle) if handle else self._by_name.get(canonical_name(name))
        if server_id is None or server_id not in self._tokens:
            raise NotFoundError(f"no organization token {'with id ' + repr(handle) if handle else 'named ' + repr(name)}: "
                                "see 'qpu-broker token list --type organization'")
        # Every use finds its token first (forward, sign, relay, sessions): an expired one goes no further.
        return self._expiry.check(self._tokens[server_id])

    def secret(self, token: OrgToken) -> Secret:
        if token.relay:
            raise FailedPreconditionError(
                f"organization token {token.name!r} is a relay token: its secret never leaves the org server, which "
                "makes every call with it")
        held = self._secrets.get(token.server_id)
        if held is None or held[1] < token.version:  # a newer secret than the metadata is right too
            raise UnavailableError(f"the secret of organization token {token.name!r} is not here yet: try again in a moment")
        return Secret(held[0])

    # -- admin operations, decided by the server ----------------------------------
    async def create(self, name: str, provider: str, secret: bytes, relay: bool = True,
                     expires_in: int = 0) -> OrgToken:
        """`expires_in`: its lifetime in seconds from now (0: never expires), kept by the server."""
        self._require()
        # `relay` too, for an org server older than `cached` (whose default was a cached token).
        token = self._token(await self._call("CreateToken", org_pb2.CreateTokenRequest(
            name=name, provider=provider, secret=secret, relay=relay, cached=not relay, expires_in_seconds=expires_in)))
        # Its handle names it at once (the tutorial gets it by id next), before the push brings the token.
        self._by_handle.setdefault(token.handle, token.server_id)
        return token

    def _selector(self, token_id: str, name: str) -> org_pb2.GetTokenRequest:
        if token_id:
            server_id = self._by_handle.get(token_id)
            if server_id is None:
                raise NotFoundError(f"no organization token with id {token_id!r}")
            return org_pb2.GetTokenRequest(id=server_id)
        return org_pb2.GetTokenRequest(name=name)

    async def get(self, token_id: str, name: str) -> OrgToken:
        self._require()
        return self._token(await self._call("GetToken", self._selector(token_id, name)))

    async def update(self, token_id: str, name: str, new_name: str | None, secret: bytes | None,
                     expires_in: int | None = None) -> OrgToken:
        self._require()
        req = org_pb2.UpdateTokenRequest(token=self._selector(token_id, name))
        if new_name is not None:
            req.name = new_name
        if secret is not None:
            req.secret = secret
        if expires_in is not None:
            req.expires_in_seconds = expires_in
        return self._token(await self._call("UpdateToken", req))

    async def delete(self, token_id: str, name: str) -> None:
        self._require()
        await self._call("DeleteToken", org_pb2.DeleteTokenRequest(token=self._selector(token_id, name)))
