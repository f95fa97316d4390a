"""The daemon's gRPC client of an organization server: connection, failover, the calls.

A login may name several servers, replicas of one org on one database: the client talks to
one at a time, and when it stops answering (the stream breaks or goes silent, or it is
unavailable) the next attempt goes to the next one, round-robin (`switch`). Every call is
made as this member's device (`org_device`: an access token its key signed for); messages
are turned into the org domain's plain records (org/records.py) here and nowhere else. What
the daemon knows and decides about the org (its tokens, their secrets, grace, quotas, usage)
lives in org/; this is what it calls (org/server_api.OrgServerApi).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from qpu_broker_client.error_mapping import ERROR_MARK_KEY
from qpu_broker_client.errors import (
    ACCESS_EXPIRED_MARK,
    REMOVED_MARK,
    FailedPreconditionError,
    InvalidArgumentError,
    QpuBrokerError,
    UnauthenticatedError,
    UnavailableError,
    error_for_code,
)
from qpu_broker_client.org_messages import quota_from_proto, usage_report
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2, org_pb2_grpc
from qpu_broker_client.secret import Secret
from qpu_broker_client.usage import Quota, UsageRecord

from qpu_broker.common.org_limits import FETCH_IDS_MAX, RELAY_MESSAGE_MAX
from qpu_broker.forward.forwarder import Reply
from qpu_broker.keys import device_key
from qpu_broker.org.records import (
    CAUGHT_UP,
    CHANGED,
    DELETED,
    HEARTBEAT,
    ORG_ONLY,
    SNAPSHOT,
    Enrolled,
    Member,
    PushedToken,
    RelayForward,
    RelayHeaders,
    RelaySign,
    WatchEvent,
)
from qpu_broker.tokens.org_login import OrgLogin
from qpu_broker.wire.org_device import DeviceAccess, enroll_request, enrolled_login
from qpu_broker.wire.org_relay import NotSent, RelayStream, Unimplemented
from qpu_broker.wire.org_tls import diagnose
from qpu_broker.wire.proto_values import header_pairs, micros, reach_from_proto

log = logging.getLogger(__name__)
CALL_TIMEOUT = 10.0
RELAY_TIMEOUT = 300.0  # a relayed forward waits on the provider too (the server applies the call's own timeout)
# Reads tried once more on the next server when the first is unavailable: any replica answers
# them alike and asking twice changes nothing. Nothing else is: a relayed call, a reservation
# or a token change may have happened on the first server before it went away.
RETRIED_READS = frozenset({"WhoAmI", "ListTokens", "FetchSecrets", "ListQuotas", "ListUsage"})
LEGACY_KEY_MARK = "legacy-key-used"  # ours only: a login of the release before whose key no longer works
_ROLES = {org_pb2.ROLE_ADMIN: "admin", org_pb2.ROLE_MEMBER: "member", org_pb2.ROLE_SERVICE: "service"}
_KINDS = {org_pb2.WatchEvent.KIND_HEARTBEAT: HEARTBEAT, org_pb2.WatchEvent.KIND_SNAPSHOT: SNAPSHOT,
          org_pb2.WatchEvent.KIND_DELETED: DELETED, org_pb2.WatchEvent.KIND_CAUGHT_UP: CAUGHT_UP}


def _reach(msg: org_pb2.Reach, where: str):
    """The org's Reach, checked as strictly as our own config; a bad one is the official hosts only."""
    try:
        return reach_from_proto(msg, where)
    except InvalidArgumentError as exc:
        log.warning("ignoring the org's settings for %s: %s", where, exc)
        return ORG_ONLY


def pushed_token(t: org_pb2.OrgToken) -> PushedToken:
    where = f"org token {t.name!r}"
    # A server that sends the effective reach with each token; else the org-wide settings came once,
    # with the snapshot, and OrgState merges them.
    reach = _reach(t.reach, where) if t.HasField("reach") else None
    own = ORG_ONLY if reach is not None else _reach(t.own, where)
    return PushedToken(t.id, t.name, t.provider, t.version, own, reach, micros(t.created_at), micros(t.updated_at),
                       t.metered, t.relay, micros(t.expires_at) if t.HasField("expires_at") else 0)


def watch_event(event: org_pb2.WatchEvent) -> WatchEvent:
    kind = _KINDS.get(event.kind, CHANGED)
    return WatchEvent(kind, tuple(pushed_token(t) for t in event.tokens), event.revision, event.store_id, event.more,
                      event.heartbeat_seconds,
                      {p: _reach(r, f"org-wide {p}") for p, r in event.org_reach.items()} if kind == SNAPSHOT and not event.more else {},
                      dict(event.custom_providers))


def member(who: org_pb2.WhoAmIResponse | org_pb2.EnrollResponse) -> Member:
    return Member(who.org, who.user, _ROLES.get(who.role, "member"))


def _headers(call: RelayHeaders) -> list[org_pb2.RelayHeader]:
    return [org_pb2.RelayHeader(name=k, value=v) for k, v in call.headers]


def relay_forward_request(relay: RelayForward) -> org_pb2.RelayForwardRequest:
    c = relay.call
    request = org_pb2.RelayForwardRequest(
        token_id=c.token_id, provider=c.provider, method=c.method, url=c.url, headers=_headers(c), body=relay.body,
        timeout_seconds=relay.timeout_seconds, region=c.region, service=c.service)
    request.luna_qpu_tokens.update(relay.luna_qpu_tokens)
    if relay.luna_api_key is not None:
        request.luna_api_key = relay.luna_api_key.reveal()
    return request


def relay_sign_request(relay: RelaySign) -> org_pb2.RelaySignRequest:
    c = relay.call
    return org_pb2.RelaySignRequest(token_id=c.token_id, provider=c.provider, method=c.method, url=c.url,
                                    headers=_headers(c), body_sha256=relay.body_sha256, body_bytes=relay.body_bytes,
                                    region=c.region, service=c.service)


def _selector(server_id: str, name: str) -> org_pb2.GetTokenRequest:
    return org_pb2.GetTokenRequest(id=server_id) if server_id else org_pb2.GetTokenRequest(name=name)


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


class WatchStream:
    """One Watch call: its events as domain records, its errors as QpuBrokerError."""

    def __init__(self, client: OrgClient, at: int, call) -> None:
        self._client, self._at, self._call = client, at, call
        self._stream = call.__aiter__()

    async def next(self) -> WatchEvent:
        try:
            return watch_event(await self._stream.__anext__())
        except grpc.aio.AioRpcError as exc:
            raise self._client.error(self._at, exc) from None

    def cancel(self) -> None:
        self._call.cancel()  # a stream given up as silent must not linger


class OrgClient:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._servers: tuple[str, ...] = ()
        self._current = 0  # the index of the server the client talks to
        self._login_id = ""
        self._ca_pem = b""
        self._device: DeviceAccess | None = None  # None: no login, or one of the release before not redeemed yet
        self._legacy_key: Secret | None = None  # that release's API key, redeemed once for a device
        self._stubs: dict[int, tuple[grpc.aio.Channel, org_pb2_grpc.OrgServiceStub]] = {}  # opened when first used
        self._relay: RelayStream | None = None  # relayed calls go on it (org_relay.py), opened when first used
        self._unary_relay: set[str] = set()  # servers of the release before the Relay stream

    # -- connection and failover ------------------------------------------------------
    def connect(self, login: OrgLogin, current: int = 0, enrolled: Enrolled | None = None) -> None:
        """Talk to `login`'s servers from now on, starting at `current` (channels of the last are closed
        first: `close`)."""
        self._retire_relay()
        self._unary_relay.clear()  # a server upgraded since is asked for the stream again
        self._servers, self._login_id, self._ca_pem = login.servers, login.login_id, login.ca_pem
        self._device = DeviceAccess(login, self._monotonic) if login.device_key is not None else None
        self._legacy_key = login.legacy_key
        self._current = current
        if enrolled is not None and self._device is not None:  # the access token Enroll gave
            self._device.take(enrolled.access_token, enrolled.access_expires_us, self._servers[current])

    def forget(self, servers: bool = False) -> None:
        """The device goes (lock, logout, or the server ended it): the key stays sealed in the store."""
        self._device = self._legacy_key = None
        self._retire_relay()
        if servers:
            self._servers, self._current, self._login_id, self._ca_pem = (), 0, "", b""

    async def close(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
            self._relay = None
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()

    @property
    def server(self) -> str:
        """The server the client talks to now (or tries next)."""
        return self._servers[self._current] if self._servers else ""

    @property
    def servers(self) -> tuple[str, ...]:
        return self._servers

    @property
    def current(self) -> int:
        return self._current

    @property
    def login_id(self) -> str:
        return self._login_id

    @property
    def device_login(self) -> OrgLogin | None:
        return self._device.login if self._device is not None else None

    @property
    def has_device(self) -> bool:
        return self._device is not None

    def expire_access(self) -> None:
        """A server said the access token expired (its clock and ours differ): a new one next call."""
        if self._device is not None:
            self._device.expire()

    def switch(self) -> None:
        """The next attempt goes to the next server (round-robin). The channel to the one left
        stays open, idle (that costs nothing), for when its turn comes again."""
        if len(self._servers) > 1:
            self._current = (self._current + 1) % len(self._servers)
            log.info("trying the organization server %s next", self.server)

    def _stub(self, at: int) -> org_pb2_grpc.OrgServiceStub:
        if at not in self._stubs:
            channel = _open_channel(self._servers[at], self._ca_pem)
            self._stubs[at] = channel, org_pb2_grpc.OrgServiceStub(channel)
        return self._stubs[at][1]

    # -- enrollment ---------------------------------------------------------------------
    async def enroll(self, servers: tuple[str, ...], ca_pem: bytes, code: bytes, login_id: str) -> Enrolled:
        """A new device for this daemon, enrolled with a member's code at the first server, in order,
        that answers (any other answer, a refused code above all, ends it there: the replicas would
        all say the same). The client goes on talking to the last login's servers until `connect`."""
        private_key = device_key.new_private_key()
        request = enroll_request(code, private_key)
        unreachable: list[str] = []
        for at, server in enumerate(servers):
            try:
                reply = await self._enroll(server, ca_pem, request)
            except UnavailableError as exc:
                unreachable.append(str(exc))
                continue
            return Enrolled(at, enrolled_login(servers, login_id, ca_pem, private_key, reply), member(reply),
                            reply.access_token, micros(reply.access_expires))
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

    async def redeem_legacy_key(self, at: int, save: Callable[[OrgLogin], Awaitable[None]]) -> None:
        """A login of the release before holds an API key: the server kept it as a one-use code,
        so it is redeemed once for a device of this daemon (`save`d), and the key leaves the store."""
        if self._legacy_key is None:
            raise FailedPreconditionError("not logged in to an organization server: run 'qpu-broker org login'")
        private_key = device_key.new_private_key()
        try:
            reply = await self._stub(at).Enroll(enroll_request(self._legacy_key.reveal(), private_key),
                                                timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            error = self.error(at, exc)
            if isinstance(error, UnauthenticatedError) and error.mark != REMOVED_MARK:
                raise UnauthenticatedError("this login's key no longer works: ask an org admin for an enrollment code "
                                           "and run qpu-broker org login", mark=LEGACY_KEY_MARK) from None
            raise error from None
        login = enrolled_login(self._servers, self._login_id, self._ca_pem, private_key, reply)
        await save(login)
        self._device, self._legacy_key = DeviceAccess(login, self._monotonic), None
        self._device.take(reply.access_token, micros(reply.access_expires), self._servers[at])
        log.info("the organization login of the release before now is device %s (its API key was used up)",
                 login.device_id)

    # -- the calls ------------------------------------------------------------------------
    async def whoami(self, at: int) -> Member:
        return member(await self._call_at(at, "WhoAmI", org_pb2.WhoAmIRequest()))

    async def watch(self, at: int, after_revision: int, store_id: str) -> WatchStream:
        try:
            metadata = await self._bearer(at)
        except grpc.aio.AioRpcError as exc:  # a new access token first (DeviceToken)
            raise self.error(at, exc) from None
        call = self._stub(at).Watch(org_pb2.WatchRequest(after_revision=after_revision, store_id=store_id),
                                    metadata=metadata)
        return WatchStream(self, at, call)

    async def fetch_secrets(self, ids: Sequence[str]) -> dict[str, tuple[int, Secret]]:
        fetched = {}
        for start in range(0, len(ids), FETCH_IDS_MAX):  # bounded answers, however many tokens the org has
            reply = await self._call("FetchSecrets", org_pb2.FetchSecretsRequest(ids=ids[start:start + FETCH_IDS_MAX]))
            fetched.update({s.id: (s.version, Secret(s.secret)) for s in reply.secrets})
        return fetched

    async def report_usage(self, records: Sequence[UsageRecord]) -> None:
        await self._call("ReportUsage", usage_report(records))  # the one place records become a report

    async def reserve(self, token_id: str) -> tuple[str, list[Quota]]:
        reply = await self._call("Reserve", org_pb2.ReserveRequest(token_id=token_id))
        return reply.reservation, [quota_from_proto(q) for q in reply.quotas]

    async def list_quotas(self) -> list[Quota]:
        reply = await self._call("ListQuotas", org_pb2.ListQuotasRequest())
        return [quota_from_proto(q) for q in reply.quotas]

    async def relay_forward(self, relay: RelayForward) -> Reply:
        reply = await self._relayed("forward", "RelayForward", relay_forward_request(relay), RELAY_TIMEOUT)

        async def once():
            yield reply.body

        return Reply(reply.status, header_pairs(reply.headers), reply.http_version or "HTTP/1.1", once())

    async def relay_sign(self, relay: RelaySign) -> list[tuple[str, str]]:
        return header_pairs((await self._relayed("sign", "RelaySign", relay_sign_request(relay), CALL_TIMEOUT)).headers)

    async def create_token(self, name: str, provider: str, secret: bytes, relay: bool, expires_in: int) -> PushedToken:
        # `relay` too, for an org server older than `cached` (whose default was a cached token).
        return pushed_token(await self._call("CreateToken", org_pb2.CreateTokenRequest(
            name=name, provider=provider, secret=secret, relay=relay, cached=not relay, expires_in_seconds=expires_in)))

    async def get_token(self, server_id: str, name: str) -> PushedToken:
        return pushed_token(await self._call("GetToken", _selector(server_id, name)))

    async def update_token(self, server_id: str, name: str, new_name: str | None, secret: bytes | None,
                           expires_in: int | None) -> PushedToken:
        req = org_pb2.UpdateTokenRequest(token=_selector(server_id, name))
        if new_name is not None:
            req.name = new_name
        if secret is not None:
            req.secret = secret
        if expires_in is not None:
            req.expires_in_seconds = expires_in
        return pushed_token(await self._call("UpdateToken", req))

    async def delete_token(self, server_id: str, name: str) -> None:
        await self._call("DeleteToken", org_pb2.DeleteTokenRequest(token=_selector(server_id, name)))

    async def list_usage(self, request: org_pb2.ListUsageRequest) -> org_pb2.ListUsageResponse:
        """The org server's usage record, read with this member's key (the server decides what they see)."""
        return await self._call("ListUsage", request)

    async def admin_quota(self, method: str, request):
        """Quotas read (ListQuotas) or, by admins, set (SetQuota, RemoveQuota) with this device's
        key: luna-quantum's time-quota calls. The server decides who may."""
        return await self._call(method, request)

    # -- how every call is made ----------------------------------------------------------------
    async def _bearer(self, at: int) -> tuple[tuple[str, str], ...]:
        """The device's access token (got from server `at` when it has none fresh) as call metadata."""
        if self._device is None:
            raise FailedPreconditionError("not logged in to an organization server: run 'qpu-broker org login'")
        return await self._device.metadata(self._stub(at), self._servers[at])

    def _at(self) -> int:
        """The current server's index; refused when there is none."""
        if not self._servers:
            raise FailedPreconditionError(
                "organization tokens need an organization server, and this daemon is not logged in to one: "
                "run 'qpu-broker org login --server HOST:PORT'")
        return self._current

    async def _call(self, method: str, request, timeout: float = CALL_TIMEOUT):
        """A call to the current server; a read it cannot answer is asked of the next one, once."""
        at = self._at()
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
                error = self.error(at, exc)
            if last or error.mark != ACCESS_EXPIRED_MARK or self._device is None:
                raise error
            self._device.expire()
        raise AssertionError("not reached")

    async def _relayed(self, kind: str, unary: str, request, timeout: float):
        """A relayed call to the current server, as a message on its Relay stream (org_relay.py), or
        as the unary call `unary` to a server of the release before. Sent again only when it was
        not run: refused for an access token the server calls expired (as `_call_at`), or never
        sent (the stream had ended first)."""
        at = self._at()
        expired_once = False
        for _ in range(3):
            if self._servers[at] in self._unary_relay:
                return await self._call_at(at, unary, request, timeout)
            try:
                metadata = await self._bearer(at)
            except grpc.aio.AioRpcError as exc:  # a new access token first (DeviceToken)
                raise self.error(at, exc) from None
            stream = self._relay_stream(at, metadata)
            try:
                return await stream.ask(kind, request, timeout)
            except Unimplemented:
                log.info("the organization server %s has no relay stream (a release before it): relayed calls "
                         "go to it one call each", self._servers[at])
                self._unary_relay.add(self._servers[at])
            except NotSent as exc:
                error = exc.error
            except QpuBrokerError as exc:
                if expired_once or exc.mark != ACCESS_EXPIRED_MARK or self._device is None:
                    raise
                expired_once, error = True, exc
                self._device.expire()
        raise error

    def _relay_stream(self, at: int, metadata) -> RelayStream:
        """The open Relay stream to server `at` with this access token; a new one (the last one
        closing once its calls are answered) when the server, the token or the stream changed."""
        stream = self._relay
        if stream is not None and stream.open and stream.at == at and stream.metadata == metadata:
            return stream
        self._retire_relay()
        call = self._stub(at).Relay(metadata=metadata)
        self._relay = RelayStream(call, at, metadata, lambda exc: self.error(at, exc))
        return self._relay

    def _retire_relay(self) -> None:
        if self._relay is not None:
            self._relay.retire()
            self._relay = None

    def error(self, at: int, exc: grpc.aio.AioRpcError) -> QpuBrokerError:
        details = (exc.details() or "").removeprefix("qpu-broker: ")
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            details = f"the organization server {self._servers[at]} is unavailable: {details}"
        return error_for_code(exc.code().name, details, _mark(exc))
