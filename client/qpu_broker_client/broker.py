"""`Broker`: the Python client of a qpu-broker daemon."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Self, TypeVar

from .connection import Connection, Stubs
from .errors import InvalidArgumentError
from .paths import resolve_paths
from .proto.qpubroker.v1 import (
    agent_pb2,
    organization_pb2,
    requests_pb2,
    sessions_pb2,
    tokens_pb2,
)
from .providers import check_provider
from .responses import ForwardResponse
from .secret import Secret
from .time_quotas import TimeQuotaCalls
from .tokens import QpuToken, QpuTokenType, TokenProvider
from .wire_messages import (
    KIND_TO_PROTO,
    MODE_FROM_PROTO,
    forward_messages,
    header_list,
    token_provider_proto,
)

if TYPE_CHECKING:
    from .answers import AgentStatus, AuditCheck, CheckResult, OrgStatus, ResolvedToken
    from .usage import Quota, UsagePage, UsageRecord

_KIND_FROM_PROTO = {v: k for k, v in KIND_TO_PROTO.items()}
_KEY_SOURCES = {
    agent_pb2.KEY_SOURCE_KEY_FILE: "key-file",
    agent_pb2.KEY_SOURCE_PASSPHRASE: "passphrase",
    agent_pb2.KEY_SOURCE_CREDENTIAL: "credential",
}
_LIST_PAGE = 1000
# Bodies up to this go in one unary call (ForwardSmall, whose daemon side refuses more);
# larger ones stream in chunks.
SMALL_BODY_MAX = 4 * 1024 * 1024
T = TypeVar("T")


_ORG_STATES = {v: k.removeprefix("STATE_").lower().replace("_", "-")
               for k, v in organization_pb2.OrgStatus.State.items()}


def _token_from_proto(msg: tokens_pb2.Token) -> QpuToken:
    utc = datetime.UTC
    return QpuToken(
        _KIND_FROM_PROTO.get(msg.kind, QpuTokenType.PERSONAL),
        name=msg.name,
        id=msg.id,
        provider=msg.provider,
        created_at=msg.created_at.ToDatetime(tzinfo=utc),
        updated_at=msg.updated_at.ToDatetime(tzinfo=utc),
        expires_at=msg.expires_at.ToDatetime(tzinfo=utc) if msg.HasField("expires_at") else None,
        mode=MODE_FROM_PROTO.get(msg.mode),
    )


def _selector(qpu_token_id: str | None, name: str | None, token_type: QpuTokenType | str | None) -> tokens_pb2.TokenSelector:
    kind = KIND_TO_PROTO[QpuTokenType.parse(token_type, QpuTokenType.PERSONAL)]
    if (qpu_token_id is None) == (name is None):
        raise InvalidArgumentError("name a token by qpu_token_id or by name (one of them)")
    if qpu_token_id is not None:
        return tokens_pb2.TokenSelector(id=qpu_token_id, kind=kind)
    return tokens_pb2.TokenSelector(name=name, kind=kind)


def _session_request(qpu_tokens: TokenProvider | None) -> sessions_pb2.OpenSessionRequest:
    # Stored tokens only: this process's LUNA_* variables are not merged into a session.
    return sessions_pb2.OpenSessionRequest(tokens=token_provider_proto(qpu_tokens, environ={}))


def _cached(cached: bool | None, relay: bool | None) -> bool:
    """An org token's mode from create's arguments: relay unless asked to cache it."""
    if cached is not None and relay is not None and cached == relay:
        raise InvalidArgumentError("an organization token is relay or cached, not both: pass cached=True, or "
                                   "neither for a relay token (the default)")
    return bool(cached) if cached is not None else relay is False


def _seconds(value: float | datetime.timedelta | None) -> int | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)
    if not 0 <= seconds <= 2**63:  # also refuses inf and nan; the daemon applies its own ceiling
        raise InvalidArgumentError("a token's lifetime must be a number of seconds from 0 (never expires) up")
    return int(seconds)


def _secret_bytes(token: str | bytes | Secret) -> bytes:
    return token.reveal() if isinstance(token, Secret) else Secret(token).reveal()


def _forward_small(stubs: Stubs, req: requests_pb2.ForwardSmallRequest, timeout: float) -> ForwardResponse:
    r = stubs.requests.ForwardSmall(req, timeout=timeout)
    chunks = [r.body]
    if r.continuation:
        rest = stubs.requests.ForwardRest(requests_pb2.ForwardRestRequest(continuation=r.continuation), timeout=timeout)
        chunks += [part.body_chunk for part in rest]
    return ForwardResponse(r.head.status, [(h.name, h.value) for h in r.head.headers], b"".join(chunks),
                           r.head.http_version)


def _forward_stream(stubs: Stubs, head: requests_pb2.ForwardHead, body: bytes, timeout: float) -> ForwardResponse:
    status, reply_headers, version, chunks = 0, [], "", []
    for part in stubs.requests.Forward(forward_messages(head, body), timeout=timeout):
        if part.HasField("head"):
            status, version = part.head.status, part.head.http_version
            reply_headers = [(h.name, h.value) for h in part.head.headers]
        else:
            chunks.append(part.body_chunk)
    return ForwardResponse(status, reply_headers, b"".join(chunks), version)


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
        self._conn = Connection(self._paths, autostart_daemon=autostart)
        self._timeout = timeout
        self.qpu_token = QpuTokenApi(self)

    # -- plumbing ---------------------------------------------------------
    def _call(self, rpc: Callable[[Stubs, float], T], timeout: float | None = None) -> T:
        return self._conn.call(rpc, timeout or self._timeout)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the agent --------------------------------------------------------
    def status(self) -> AgentStatus:
        from .answers import AgentStatus

        r = self._call(lambda s, t: s.agent.Status(agent_pb2.StatusRequest(), timeout=t))
        return AgentStatus(
            locked=r.locked, lock_reason=r.lock_reason, key_source=_KEY_SOURCES.get(r.key_source, "unknown"),
            personal_tokens=r.personal_tokens, version=r.version, pid=r.pid,
            uptime_seconds=r.uptime_seconds, store_path=r.store_path, socket_path=r.socket_path,
            warnings=tuple(r.warnings), key_memory_locked=r.key_memory_locked,
        )

    def reload(self) -> None:
        """Have the daemon re-read its config.toml (a bad one raises InvalidArgumentError; nothing changes)."""
        self._call(lambda s, t: s.agent.Reload(agent_pb2.ReloadRequest(), timeout=t))

    def stop(self) -> None:
        """Ask the daemon to drain in-flight calls and exit (like SIGTERM)."""
        self._call(lambda s, t: s.agent.Stop(agent_pb2.StopRequest(), timeout=t))

    def lock(self) -> None:
        self._call(lambda s, t: s.agent.Lock(agent_pb2.LockRequest(), timeout=t))

    def unlock(self, passphrase: str | bytes | Secret | None = None) -> None:
        secret = _secret_bytes(passphrase) if passphrase is not None else b""
        req = agent_pb2.UnlockRequest(passphrase=secret)
        self._call(lambda s, t: s.agent.Unlock(req, timeout=t))

    def change_passphrase(self, old: str | bytes | Secret | None, new: str | bytes | Secret | None) -> str:
        """Set, change or (new=None) remove the passphrase; returns the new key source."""
        req = agent_pb2.ChangePassphraseRequest(
            old_passphrase=_secret_bytes(old) if old is not None else b"",
            new_passphrase=_secret_bytes(new) if new is not None else b"",
        )
        r = self._call(lambda s, t: s.agent.ChangePassphrase(req, timeout=t))
        return _KEY_SOURCES.get(r.key_source, "unknown")

    # -- the organization server ------------------------------------------
    def _org_status(self, r: organization_pb2.OrgStatus) -> OrgStatus:
        from .answers import OrgStatus
        from .org_messages import quota_from_proto

        return OrgStatus(_ORG_STATES.get(r.state, "unknown"), r.server, r.org, r.user, r.role, r.tokens,
                         r.seconds_since_contact, r.grace_seconds, r.detail, r.usage_waiting,
                         tuple(quota_from_proto(q) for q in r.quotas), tuple(r.metered_tokens), tuple(r.relay_tokens),
                         tuple(r.servers), tuple(r.cached_tokens), r.device_id,
                         r.device_expires.ToMicroseconds() if r.HasField("device_expires") else 0)

    def org_login(self, server: str | Sequence[str], code: str | bytes | Secret, *, ca_pem: bytes = b"") -> OrgStatus:
        """Log the daemon in to an org server with an enrollment code an org admin gave you: the daemon
        makes a device key (sealed in its store, never shown) and enrolls it; the code is used up.
        `server` is HOST:PORT, or a list of them: replicas of one org, which the daemon fails over between."""
        servers = [server] if isinstance(server, str) else list(server)
        # `server` too, for a daemon older than `servers` (it then uses the first).
        req = organization_pb2.LoginRequest(server=servers[0] if servers else "", servers=servers, ca_pem=ca_pem,
                                            api_key=_secret_bytes(code))
        return self._org_status(self._call(lambda s, t: s.org.Login(req, timeout=t)))

    def org_logout(self) -> None:
        self._call(lambda s, t: s.org.Logout(organization_pb2.LogoutRequest(), timeout=t))

    def org_status(self) -> OrgStatus:
        return self._org_status(self._call(lambda s, t: s.org.Status(organization_pb2.OrgStatusRequest(), timeout=t)))

    def org_usage(self, *, member: str = "", token: str = "", since_us: int = 0, after_seq: int = 0,
                  limit: int = 0) -> list[UsageRecord]:
        """The records of one read of the org server's usage record (`org_usage_page`'s)."""
        return self.org_usage_page(member=member, token=token, since_us=since_us, after_seq=after_seq,
                                   limit=limit).records

    def org_usage_page(self, *, member: str = "", token: str = "", since_us: int = 0, after_seq: int = 0,
                       limit: int = 0) -> UsagePage:
        """One read of the org server's record of org token use: your own (admins: anyone's, or
        `member`'s), oldest first, at most `limit` (0: the server's page, 1000) after `after_seq`.
        A read examines a bounded number of records, so fewer (even none) is not the end: while
        `more`, read again with `after_seq` set to the page's `after_seq`."""
        from .org_messages import usage_page_from_proto

        req = organization_pb2.OrgUsageRequest(member=member, token=token, after_seq=after_seq, limit=limit)
        if since_us:
            req.since.FromMicroseconds(since_us)
        return usage_page_from_proto(self._call(lambda s, t: s.org.Usage(req, timeout=t)), limit)

    # The org's quotas, for the time-quota calls (time_quotas.py): plain Quota in and out.
    def _set_quota(self, member: str, token: str, unit: str, *, update: bool, limit: int | None,
                   start_us: int | None, end_us: int | None) -> Quota:
        from .org_messages import quota_from_proto, set_quota_request

        req = set_quota_request(member, token, unit, update=update, limit=limit, start_us=start_us, end_us=end_us)
        return quota_from_proto(self._call(lambda s, t: s.org.SetQuota(req, timeout=t)))

    def _quotas(self, member: str) -> list[Quota]:
        from .org_messages import list_quotas_request, quota_from_proto

        req = list_quotas_request(member)
        return [quota_from_proto(q) for q in self._call(lambda s, t: s.org.Quotas(req, timeout=t)).quotas]

    def _remove_quota(self, member: str, token: str, unit: str) -> None:
        from .org_messages import remove_quota_request

        req = remove_quota_request(member, token, unit)
        self._call(lambda s, t: s.org.RemoveQuota(req, timeout=t))

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
        if len(body) <= SMALL_BODY_MAX:  # one unary call; the rest of a large answer streams after
            req = requests_pb2.ForwardSmallRequest(head=head, body=body)
            return self._call(lambda s, t: _forward_small(s, req, t), (timeout or 60.0) + 30.0)
        return self._call(lambda s, t: _forward_stream(s, head, body, t), (timeout or 60.0) + 30.0)

    def sign(self, method: str, url: str, *, headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
             body: bytes = b"", qpu_tokens: TokenProvider | None = None, region: str | None = None,
             service: str | None = None, provider: str | None = None) -> dict[str, str]:
        """The headers to add to this request (AWS SigV4). Bearer providers are refused: use forward."""
        req = requests_pb2.SignRequest(
            method=method, url=url, headers=header_list(headers), body=body,
            tokens=token_provider_proto(qpu_tokens), region=region or "", service=service or "",
            provider=provider or "")
        r = self._call(lambda s, t: s.requests.Sign(req, timeout=t))
        return {h.name: h.value for h in r.headers}

    def resolve(self, provider: str, qpu_tokens: TokenProvider | None = None) -> list[ResolvedToken]:
        """Which token a call to `provider` would use (field, kind, name, id; never the secret)."""
        req = requests_pb2.ResolveRequest(provider=provider, tokens=token_provider_proto(qpu_tokens))
        r = self._call(lambda s, t: s.requests.Resolve(req, timeout=t))
        from .answers import ResolvedToken

        return [ResolvedToken(t.field, _KIND_FROM_PROTO.get(t.kind, QpuTokenType.INLINE), t.name or None, t.id or None)
                for t in r.tokens]

    # -- exec sessions -----------------------------------------------------
    def hold_session(self, qpu_tokens: TokenProvider | None = None, *, command: str = "") -> Session:
        """Open an exec session that lasts until `close()` (or this process ends): its `env`
        points unmodified SDKs at loopback endpoints, with placeholders instead of secrets.
        `qpu_tokens` picks stored tokens; a provider left out uses its only personal token.
        `command` names what uses it in the audit log (a program's name, never its arguments)."""
        req = _session_request(qpu_tokens)
        req.command = command

        def start(stubs: Stubs, _timeout: float):
            call = stubs.sessions.Hold(req)  # no deadline: it lasts as long as the session
            return call, next(call).opened

        call, opened = self._call(start)
        # The session lives on this Broker's channel: it keeps the Broker (`Broker().hold_session()`
        # drops it at once, and a dropped Broker closes its channel).
        return Session(opened, call.cancel, holder=self)

    def open_session(self, qpu_tokens: TokenProvider | None = None, *, command: str = "") -> Session:
        """A session that outlives this process (`qpu-broker env`): ends with `end_session` or lock."""
        req = _session_request(qpu_tokens)
        req.command = command
        opened = self._call(lambda s, t: s.sessions.Open(req, timeout=t))
        return Session(opened, lambda: self.end_session(opened.session_id))

    def end_session(self, session_id: str = "") -> int:
        """End one session opened with `open_session` (empty: all of them); how many ended."""
        req = sessions_pb2.EndSessionRequest(session_id=session_id)
        return self._call(lambda s, t: s.sessions.End(req, timeout=t)).ended

    def check(self, *, accept_rollback: bool = False) -> CheckResult:
        """Open every stored secret; with `accept_rollback`, first accept a store older than the last one seen."""
        req = agent_pb2.CheckRequest(accept_rollback=accept_rollback)
        r = self._call(lambda s, t: s.agent.Check(req, timeout=t))
        from .answers import CheckResult, DamagedToken

        return CheckResult(r.checked, [DamagedToken(d.id, d.name, d.provider, d.reason) for d in r.damaged],
                           r.rollback)

    def verify_audit(self) -> AuditCheck:
        """Check the local audit log: every entry chained to the one before, none edited, none cut off."""
        r = self._call(lambda s, t: s.agent.VerifyAudit(agent_pb2.VerifyAuditRequest(), timeout=t))
        from .answers import AuditCheck

        return AuditCheck(r.entries, r.problem, r.path)


@dataclasses.dataclass(frozen=True)
class SessionEndpoint:
    provider: str
    url: str
    token_name: str


class Session:
    """An exec session: `env` holds the variables for the command (placeholders, never secrets)."""

    def __init__(self, opened: sessions_pb2.SessionOpened, end: Callable[[], object], holder: object = None) -> None:
        self.session_id = opened.session_id
        self._holder = holder  # what must live as long as the session (the Broker whose channel holds it)
        self.env = {v.name: v.value for v in opened.env}
        self.unset = list(opened.unset)  # names to remove from the command's environment
        self.endpoints = [SessionEndpoint(e.provider, e.url, e.token_name) for e in opened.endpoints]
        self.skipped = list(opened.skipped)
        self._end = end

    def close(self) -> None:
        self._end()

    def merged(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` (an environment) as the session's command gets it: the session's variables
        over it, those the session unsets removed, NO_PROXY keeping base's entries, and a CA
        bundle base names keeping its certificates, the session's CA added (ca_bundles)."""
        # Here, not at the top: its hashlib loads OpenSSL's, which a command without a session never needs.
        from .ca_bundles import with_users_cas

        env = {k: v for k, v in {**base, **self.env, **with_users_cas(self.env, base)}.items() if k not in self.unset}
        for name in ("NO_PROXY", "no_proxy"):
            if base.get(name) and name in self.env:
                env[name] = f"{base[name]},{self.env[name]}"
        return env

    @contextlib.contextmanager
    def environ(self) -> Iterator[None]:
        """This process's environment as `qpu-broker exec` gives a command, for the block: for
        SDKs that read their settings from the environment when a client is made
        (`QiskitRuntimeService()`, `LunaQ()`). What was there before is put back after."""
        saved = dict(os.environ)
        try:
            merged = self.merged(saved)
            for name in set(saved) - set(merged):
                del os.environ[name]
            os.environ.update(merged)
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # the placeholders are capabilities: not in a repr
        return f"Session({self.session_id}, {', '.join(e.provider for e in self.endpoints)})"


class QpuTokenApi(TimeQuotaCalls):
    """`Broker().qpu_token`: the tutorial's token verbs, with its argument names; luna-quantum
    1.3's time-quota calls on org tokens (time_quotas.py)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def create(self, name: str, provider: str, token: str | bytes | Secret, token_type: QpuTokenType | str = QpuTokenType.PERSONAL, *, request_id: str | None = None, expires_in: float | datetime.timedelta | None = None, cached: bool | None = None, relay: bool | None = None) -> QpuToken:
        """Store a token. `request_id` makes a retried create return the first result;
        `expires_in` (seconds or a timedelta) bounds its life, like `ssh-add -t`. An org token
        (admins) is a relay token, its secret kept on the org server, which makes every call with
        it; `cached=True` has members' daemons hold its secret instead (faster, trusting their
        machines). `relay` is the older spelling: `relay=False` asks for a cached token."""
        import uuid  # here, not at the top: it loads `platform`, which no other call needs

        provider = check_provider(provider)
        kind = KIND_TO_PROTO[QpuTokenType.parse(token_type)]
        mode = _cached(cached, relay)
        # `relay` too, for a daemon older than `cached` (whose default was a cached token).
        req = tokens_pb2.CreateTokenRequest(
            name=name, provider=provider, kind=kind, secret=_secret_bytes(token),
            request_id=request_id or uuid.uuid4().hex, expires_in_seconds=_seconds(expires_in) or 0,
            cached=mode, relay=not mode if kind == tokens_pb2.TOKEN_KIND_ORGANIZATION else bool(relay),
        )
        msg = self._broker._call(lambda s, t: s.tokens.CreateToken(req, timeout=t))
        return _token_from_proto(msg)

    def get(self, name: str | None = None, token_type: QpuTokenType | str = QpuTokenType.PERSONAL, *,
            qpu_token_id: str | None = None) -> QpuToken:
        """By name (`get("My IBM Token")`, as luna-quantum 1.x) or by id (`get(qpu_token_id=...)`,
        as the tutorial)."""
        req = tokens_pb2.GetTokenRequest(token=_selector(qpu_token_id, name, token_type))
        msg = self._broker._call(lambda s, t: s.tokens.GetToken(req, timeout=t))
        return _token_from_proto(msg)

    def get_all(self, filter_provider: str | None = None, token_type: QpuTokenType | str | None = None, limit: int | None = None, offset: int | None = None) -> TokensByType:
        """Both kinds, always present: `{PERSONAL: [...], ORGANIZATION: [...]}`; ORGANIZATION is
        also found as GROUP and "group" (luna-quantum 1.x).

        `limit`/`offset` apply per kind; without a limit every token is returned.
        """
        if filter_provider is not None:
            filter_provider = check_provider(filter_provider)
        kind = KIND_TO_PROTO[QpuTokenType.parse(token_type)] if token_type is not None else tokens_pb2.TOKEN_KIND_UNSPECIFIED
        result = TokensByType({QpuTokenType.PERSONAL: [], QpuTokenType.ORGANIZATION: []})
        start = offset or 0
        end = None if limit is None else start + limit
        while end is None or start < end:
            page = _LIST_PAGE if end is None else min(_LIST_PAGE, end - start)
            req = tokens_pb2.ListTokensRequest(provider=filter_provider or "", kind=kind, limit=page, offset=start)
            r = self._broker._call(lambda s, t, req=req: s.tokens.ListTokens(req, timeout=t))
            result[QpuTokenType.PERSONAL] += [_token_from_proto(t) for t in r.personal]
            result[QpuTokenType.ORGANIZATION] += [_token_from_proto(t) for t in r.organization]
            start += page
            if start >= max(r.personal_total, r.organization_total):
                break
        return result

    def update(self, qpu_token_id: str | None = None, name: str | None = None, token_type: QpuTokenType | str = QpuTokenType.PERSONAL, *, token: str | bytes | Secret | None = None, qpu_token_name: str | None = None, expires_in: float | datetime.timedelta | None = None) -> QpuToken:
        """Rename (`name=`) and/or rotate the secret in place (`token=`); the id stays.
        `expires_in` gives it a new lifetime from now (0: never expires)."""
        if name is None and token is None and expires_in is None:
            raise InvalidArgumentError("nothing to update: give name= to rename, token= to rotate, or expires_in=")
        req = tokens_pb2.UpdateTokenRequest(token=_selector(qpu_token_id, qpu_token_name, token_type))
        if name is not None:
            req.name = name
        if token is not None:
            req.secret = _secret_bytes(token)
        if expires_in is not None:
            req.expires_in_seconds = _seconds(expires_in)
        return _token_from_proto(self._broker._call(lambda s, t: s.tokens.UpdateToken(req, timeout=t)))

    def rename(self, name: str, new_name: str, token_type: QpuTokenType | str = QpuTokenType.PERSONAL) -> QpuToken:
        """luna-quantum 1.x's rename: the token called `name` is called `new_name` from now."""
        return self.update(name=new_name, token_type=token_type, qpu_token_name=name)

    def delete(self, name: str | None = None, token_type: QpuTokenType | str = QpuTokenType.PERSONAL, *,
               qpu_token_id: str | None = None, qpu_token_name: str | None = None) -> None:
        """By name (`delete("My IBM Token")`, as luna-quantum 1.x) or by id (`qpu_token_id=`)."""
        if name is not None and qpu_token_name is not None:
            raise InvalidArgumentError("name the token once: positionally or as qpu_token_name=")
        req = tokens_pb2.DeleteTokenRequest(token=_selector(qpu_token_id, name or qpu_token_name, token_type))
        self._broker._call(lambda s, t: s.tokens.DeleteToken(req, timeout=t))


    def set_default(self, name: str | None = None, *, qpu_token_id: str | None = None) -> dict[str, str]:
        """The personal token exec sessions use for its provider when that provider has several;
        returns every provider's default (provider -> token name)."""
        req = tokens_pb2.SetDefaultTokenRequest(token=_selector(qpu_token_id, name, QpuTokenType.PERSONAL))
        return dict(self._broker._call(lambda s, t: s.tokens.SetDefaultToken(req, timeout=t)).defaults)

    def clear_default(self, provider: str) -> dict[str, str]:
        req = tokens_pb2.SetDefaultTokenRequest(clear_provider=check_provider(provider))
        return dict(self._broker._call(lambda s, t: s.tokens.SetDefaultToken(req, timeout=t)).defaults)

    def defaults(self) -> dict[str, str]:
        """provider -> the name of its default personal token."""
        req = tokens_pb2.SetDefaultTokenRequest()
        return dict(self._broker._call(lambda s, t: s.tokens.SetDefaultToken(req, timeout=t)).defaults)


class TokensByType(dict):
    """`get_all()`'s answer, keyed by token type: any spelling of a type finds its list
    (QpuTokenTypeEnum.GROUP, "group", "organization", luna-quantum's own enum members)."""

    @staticmethod
    def _key(key: object) -> object:
        try:
            return QpuTokenType.parse(key)  # type: ignore[arg-type]
        except InvalidArgumentError:
            return key

    def __getitem__(self, key: object) -> list[QpuToken]:
        return super().__getitem__(self._key(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._key(key))

    def get(self, key: object, default: object = None):
        return super().get(self._key(key), default)


__all__ = ["Broker", "QpuTokenApi", "Session", "SessionEndpoint", "TokensByType"]
