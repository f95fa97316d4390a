"""`Broker`: the Python client of a qpu-broker daemon."""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import uuid
from collections.abc import Mapping

import grpc

from . import autostart as daemon_start
from .errors import InvalidArgumentError
from .paths import resolve_paths
from .proto import (
    agent_pb2,
    agent_pb2_grpc,
    organization_pb2,
    organization_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
)
from .providers import check_provider
from .rpc import translate_rpc_errors
from .secret import Secret
from .tokens import QpuToken, QpuTokenType, TokenProvider
from .usage import ForwardResponse, forward_messages, header_list, token_provider_proto

_KIND_TO_PROTO = {
    QpuTokenType.PERSONAL: tokens_pb2.TOKEN_KIND_PERSONAL,
    QpuTokenType.ORGANIZATION: tokens_pb2.TOKEN_KIND_ORGANIZATION,
    QpuTokenType.INLINE: tokens_pb2.TOKEN_KIND_INLINE,
}
_KIND_FROM_PROTO = {v: k for k, v in _KIND_TO_PROTO.items()}
_KEY_SOURCES = {
    agent_pb2.KEY_SOURCE_KEY_FILE: "key-file",
    agent_pb2.KEY_SOURCE_PASSPHRASE: "passphrase",
    agent_pb2.KEY_SOURCE_CREDENTIAL: "credential",
}
_CHANNEL_OPTIONS = [
    # A restarted daemon should be found again at once, not after grpc's
    # default reconnect back-off of a second or more.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_LIST_PAGE = 1000
# Bodies up to this go in one unary call; larger ones stream in chunks.
SMALL_BODY_MAX = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class AgentStatus:
    locked: bool
    lock_reason: str
    key_source: str
    personal_tokens: int
    version: str
    pid: int
    uptime_seconds: float
    store_path: str
    socket_path: str


@dataclasses.dataclass(frozen=True)
class DamagedToken:
    id: str
    name: str
    provider: str
    reason: str


_ORG_STATES = {v: k.removeprefix("STATE_").lower().replace("_", "-")
               for k, v in organization_pb2.OrgStatus.State.items()}


@dataclasses.dataclass(frozen=True)
class OrgStatus:
    """The daemon's link to its organization server."""

    state: str  # not-logged-in | connecting | connected | disconnected | unavailable | locked
    server: str
    org: str
    user: str
    role: str
    tokens: int
    seconds_since_contact: float
    grace_seconds: float
    detail: str


@dataclasses.dataclass(frozen=True)
class ResolvedToken:
    """A preview of the token a call would use: where it came from, never its value."""

    field: str
    token_type: QpuTokenType
    name: str | None
    id: str | None


@dataclasses.dataclass(frozen=True)
class CheckResult:
    checked: int
    damaged: list[DamagedToken]


def _token_from_proto(msg: tokens_pb2.Token) -> QpuToken:
    utc = datetime.timezone.utc
    return QpuToken(
        _KIND_FROM_PROTO.get(msg.kind, QpuTokenType.PERSONAL),
        name=msg.name,
        id=msg.id,
        provider=msg.provider,
        created_at=msg.created_at.ToDatetime(tzinfo=utc),
        updated_at=msg.updated_at.ToDatetime(tzinfo=utc),
    )


def _selector(qpu_token_id: str | None, name: str | None, token_type: QpuTokenType | str | None) -> tokens_pb2.TokenSelector:
    kind = _KIND_TO_PROTO[QpuTokenType.parse(token_type, QpuTokenType.PERSONAL)]
    if (qpu_token_id is None) == (name is None):
        raise InvalidArgumentError("name a token by qpu_token_id or by name (one of them)")
    if qpu_token_id is not None:
        return tokens_pb2.TokenSelector(id=qpu_token_id, kind=kind)
    return tokens_pb2.TokenSelector(name=name, kind=kind)


def _secret_bytes(token: str | bytes | Secret) -> bytes:
    return token.reveal() if isinstance(token, Secret) else Secret(token).reveal()


class Broker:
    """A connection to the qpu-broker daemon of this user.

    The socket is `socket=`, else $QPU_BROKER_SOCKET, else the default path.
    When no daemon answers, one is started in the background unless
    `autostart=False` or QPU_BROKER_NO_AUTOSTART=1.
    """

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, autostart: bool | None = None, timeout: float = 30.0) -> None:
        self._paths = resolve_paths()
        if socket is not None:
            self._paths = dataclasses.replace(self._paths, socket=pathlib.Path(socket).absolute())
        self.socket = str(self._paths.socket)
        self._autostart = daemon_start.autostart_enabled() if autostart is None else autostart
        self._timeout = timeout
        self._channel: grpc.Channel | None = None
        self.qpu_token = QpuTokenApi(self)

    # -- plumbing ---------------------------------------------------------
    def _connect(self) -> grpc.Channel:
        if self._channel is None:
            if self._autostart and not daemon_start.answers(self._paths):
                daemon_start.start_daemon(self._paths)
            self._channel = grpc.insecure_channel(f"unix:{self.socket}", options=_CHANNEL_OPTIONS)
            self._tokens = tokens_pb2_grpc.TokenServiceStub(self._channel)
            self._agent = agent_pb2_grpc.AgentServiceStub(self._channel)
            self._requests = requests_pb2_grpc.RequestServiceStub(self._channel)
            self._org = organization_pb2_grpc.OrganizationServiceStub(self._channel)
        return self._channel

    def _call(self, stub: str, method: str, request, timeout: float | None = None):  # type: ignore[no-untyped-def]
        self._connect()
        with translate_rpc_errors(self.socket):
            return getattr(getattr(self, stub), method)(request, timeout=timeout or self._timeout)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the agent --------------------------------------------------------
    def status(self) -> AgentStatus:
        r = self._call("_agent", "Status", agent_pb2.StatusRequest())
        return AgentStatus(
            locked=r.locked, lock_reason=r.lock_reason, key_source=_KEY_SOURCES.get(r.key_source, "unknown"),
            personal_tokens=r.personal_tokens, version=r.version, pid=r.pid,
            uptime_seconds=r.uptime_seconds, store_path=r.store_path, socket_path=r.socket_path,
        )

    def lock(self) -> None:
        self._call("_agent", "Lock", agent_pb2.LockRequest())

    def unlock(self, passphrase: str | bytes | Secret | None = None) -> None:
        secret = _secret_bytes(passphrase) if passphrase is not None else b""
        self._call("_agent", "Unlock", agent_pb2.UnlockRequest(passphrase=secret))

    def change_passphrase(self, old: str | bytes | Secret | None, new: str | bytes | Secret | None) -> str:
        """Set, change or (new=None) remove the passphrase; returns the new key source."""
        r = self._call("_agent", "ChangePassphrase", agent_pb2.ChangePassphraseRequest(
            old_passphrase=_secret_bytes(old) if old is not None else b"",
            new_passphrase=_secret_bytes(new) if new is not None else b"",
        ))
        return _KEY_SOURCES.get(r.key_source, "unknown")

    # -- the organization server ------------------------------------------
    def _org_status(self, r: organization_pb2.OrgStatus) -> OrgStatus:
        return OrgStatus(_ORG_STATES.get(r.state, "unknown"), r.server, r.org, r.user, r.role, r.tokens,
                         r.seconds_since_contact, r.grace_seconds, r.detail)

    def org_login(self, server: str, api_key: str | bytes | Secret, *, ca_pem: bytes = b"") -> OrgStatus:
        """Log the daemon in to an org server with a member's API key (kept in its encrypted store)."""
        return self._org_status(self._call("_org", "Login", organization_pb2.LoginRequest(
            server=server, ca_pem=ca_pem, api_key=_secret_bytes(api_key))))

    def org_logout(self) -> None:
        self._call("_org", "Logout", organization_pb2.LogoutRequest())

    def org_status(self) -> OrgStatus:
        return self._org_status(self._call("_org", "Status", organization_pb2.OrgStatusRequest()))

    # -- using tokens ------------------------------------------------------
    def forward(self, method: str, url: str, *, provider: str, headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
                body: bytes = b"", qpu_tokens: TokenProvider | None = None, timeout: float | None = None,
                region: str | None = None, service: str | None = None) -> ForwardResponse:
        """Send a request to `provider` through the daemon, which adds the credential.

        Tokens come from `qpu_tokens`, then this process's LUNA_* variables. The
        daemon refuses hosts that are not the provider's, and never follows redirects.
        """
        head = requests_pb2.ForwardHead(
            method=method, url=url, provider=provider, headers=header_list(headers),
            tokens=token_provider_proto(qpu_tokens), timeout_seconds=timeout or 0.0,
            region=region or "", service=service or "")
        self._connect()
        deadline = (timeout or 60.0) + 30.0
        with translate_rpc_errors(self.socket):
            if len(body) <= SMALL_BODY_MAX:  # one unary call; the rest of a large answer streams after
                r = self._requests.ForwardSmall(requests_pb2.ForwardSmallRequest(head=head, body=body), timeout=deadline)
                chunks = [r.body]
                if r.continuation:
                    rest = self._requests.ForwardRest(requests_pb2.ForwardRestRequest(continuation=r.continuation),
                                                      timeout=deadline)
                    chunks += [part.body_chunk for part in rest]
                return ForwardResponse(r.head.status, [(h.name, h.value) for h in r.head.headers], b"".join(chunks),
                                       r.head.http_version)
            status, reply_headers, version, chunks = 0, [], "", []
            for part in self._requests.Forward(forward_messages(head, body), timeout=deadline):
                if part.HasField("head"):
                    status, version = part.head.status, part.head.http_version
                    reply_headers = [(h.name, h.value) for h in part.head.headers]
                else:
                    chunks.append(part.body_chunk)
        return ForwardResponse(status, reply_headers, b"".join(chunks), version)

    def sign(self, method: str, url: str, *, headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
             body: bytes = b"", qpu_tokens: TokenProvider | None = None, region: str | None = None,
             service: str | None = None, provider: str | None = None) -> dict[str, str]:
        """The headers to add to this request (AWS SigV4). Bearer providers are refused: use forward."""
        r = self._call("_requests", "Sign", requests_pb2.SignRequest(
            method=method, url=url, headers=header_list(headers), body=body,
            tokens=token_provider_proto(qpu_tokens), region=region or "", service=service or "",
            provider=provider or ""))
        return {h.name: h.value for h in r.headers}

    def resolve(self, provider: str, qpu_tokens: TokenProvider | None = None) -> list[ResolvedToken]:
        """Which token a call to `provider` would use (field, kind, name, id; never the secret)."""
        r = self._call("_requests", "Resolve", requests_pb2.ResolveRequest(
            provider=provider, tokens=token_provider_proto(qpu_tokens)))
        return [ResolvedToken(t.field, _KIND_FROM_PROTO.get(t.kind, QpuTokenType.INLINE), t.name or None, t.id or None)
                for t in r.tokens]

    def check(self) -> CheckResult:
        r = self._call("_agent", "Check", agent_pb2.CheckRequest())
        return CheckResult(r.checked, [DamagedToken(d.id, d.name, d.provider, d.reason) for d in r.damaged])


class QpuTokenApi:
    """`Broker().qpu_token`: the tutorial's token verbs, with its argument names."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def create(self, name: str, provider: str, token: str | bytes | Secret, token_type: QpuTokenType | str = QpuTokenType.PERSONAL, *, request_id: str | None = None) -> QpuToken:
        """Store a token. `request_id` makes a retried create return the first result."""
        check_provider(provider)
        kind = _KIND_TO_PROTO[QpuTokenType.parse(token_type)]
        msg = self._broker._call("_tokens", "CreateToken", tokens_pb2.CreateTokenRequest(
            name=name, provider=provider, kind=kind, secret=_secret_bytes(token),
            request_id=request_id or uuid.uuid4().hex,
        ))
        return _token_from_proto(msg)

    def get(self, qpu_token_id: str | None = None, token_type: QpuTokenType | str = QpuTokenType.PERSONAL, *, name: str | None = None) -> QpuToken:
        msg = self._broker._call("_tokens", "GetToken", tokens_pb2.GetTokenRequest(token=_selector(qpu_token_id, name, token_type)))
        return _token_from_proto(msg)

    def get_all(self, filter_provider: str | None = None, token_type: QpuTokenType | str | None = None, limit: int | None = None, offset: int | None = None) -> dict[QpuTokenType, list[QpuToken]]:
        """Both kinds, always present: `{PERSONAL: [...], ORGANIZATION: [...]}`.

        `limit`/`offset` apply per kind; without a limit every token is returned.
        """
        if filter_provider is not None:
            check_provider(filter_provider)
        kind = _KIND_TO_PROTO[QpuTokenType.parse(token_type)] if token_type is not None else tokens_pb2.TOKEN_KIND_UNSPECIFIED
        result: dict[QpuTokenType, list[QpuToken]] = {QpuTokenType.PERSONAL: [], QpuTokenType.ORGANIZATION: []}
        start = offset or 0
        end = None if limit is None else start + limit
        while end is None or start < end:
            page = _LIST_PAGE if end is None else min(_LIST_PAGE, end - start)
            r = self._broker._call("_tokens", "ListTokens", tokens_pb2.ListTokensRequest(
                provider=filter_provider or "", kind=kind, limit=page, offset=start))
            result[QpuTokenType.PERSONAL] += [_token_from_proto(t) for t in r.personal]
            result[QpuTokenType.ORGANIZATION] += [_token_from_proto(t) for t in r.organization]
            start += page
            if start >= max(r.personal_total, r.organization_total):
                break
        return result

    def update(self, qpu_token_id: str | None = None, name: str | None = None, token_type: QpuTokenType | str = QpuTokenType.PERSONAL, *, token: str | bytes | Secret | None = None, qpu_token_name: str | None = None) -> QpuToken:
        """Rename (`name=`) and/or rotate the secret in place (`token=`); the id stays."""
        if name is None and token is None:
            raise InvalidArgumentError("nothing to update: give name= to rename or token= to rotate")
        req = tokens_pb2.UpdateTokenRequest(token=_selector(qpu_token_id, qpu_token_name, token_type))
        if name is not None:
            req.name = name
        if token is not None:
            req.secret = _secret_bytes(token)
        return _token_from_proto(self._broker._call("_tokens", "UpdateToken", req))

    def delete(self, qpu_token_id: str | None = None, token_type: QpuTokenType | str = QpuTokenType.PERSONAL, *, qpu_token_name: str | None = None) -> None:
        self._broker._call("_tokens", "DeleteToken", tokens_pb2.DeleteTokenRequest(token=_selector(qpu_token_id, qpu_token_name, token_type)))


__all__ = ["AgentStatus", "Broker", "CheckResult", "DamagedToken", "OrgStatus", "QpuTokenApi", "ResolvedToken"]
