"""Exec sessions: an unmodified SDK talks to a loopback endpoint the daemon opens for it.

A session holds, per provider, the stored token it uses and a placeholder: 256
random bits that the SDK is given instead of the secret (`qpu-broker exec` puts
it in the variables the SDK reads). Each provider gets a listener of its own on
127.0.0.1. A request must carry the placeholder exactly where the SDK sends its
credential (compared in constant time), or it is refused with 401 and nothing is
sent. An admitted request is forwarded by the Forwarder, like a Forward call:
the real credential in place of the placeholder, to the provider's endpoint
(its official host, or `[providers.NAME] endpoint`), under the same destination
rules, bodies streamed both ways. Ending a session closes its listeners, so its
placeholders are worth nothing from then on; a new session has new ones.

Served now: header schemes whose SDK variables are known (D-Wave, IonQ, Luna). AWS
(verify the SDK's SigV4 against the placeholder, re-sign), the exchange schemes
(IBM, Q-CTRL: a session-scoped stand-in bearer) and Fujitsu are reported
as not served yet when a --token names them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import hmac
import logging
import pathlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from qpu_broker_client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    LockedError,
    NotFoundError,
    QpuBrokerError,
)
from qpu_broker_client.providers import AWS_SPLIT_FIELDS, LUNA_AWS_ENV, LUNA_ENV

from qpu_broker.common.config import Config
from qpu_broker.common.dirs import ensure_private_dir
from qpu_broker.common.url import parse_url
from qpu_broker.forward.forwarder import ForwardCall, Forwarder
from qpu_broker.providers import sigv4
from qpu_broker.providers.base import HOP_BY_HOP, ExchangeScheme, HeaderScheme, Scheme
from qpu_broker.tokens.events import Event, Locked
from qpu_broker.tokens.resolution import Ref, Resolver
from qpu_broker.tokens.vault import INLINE, PERSONAL, Vault

if TYPE_CHECKING:
    from aiohttp import web

    from qpu_broker.forward.session_proxy import SessionProxy

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1,localhost"  # for NO_PROXY: the caller adds its own entries
PLACEHOLDER_PREFIX = "qbs_"  # recognisable in a leaked environment dump; the rest is 256 random bits
# HTTP status for each error a forward can raise (the session endpoint speaks HTTP, not gRPC).
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 412, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 502,
    "DEADLINE_EXCEEDED": 504,
}
# AWS services a session signs for: Braket's API. S3 and STS (amazon-braket-sdk's results and
# caller identity) are other services a Braket credential should not reach through a session yet.
SIGNED_SERVICES = ("braket",)
SIGNATURE_SKEW = datetime.timedelta(minutes=5)  # AWS itself allows 15; a session is local
MAX_STANDINS = 64  # live stand-in bearers per session: an SDK refreshes its one now and then
REWRITE_LIMIT = 16 << 20  # JSON answers whose URLs a session rewrites are read whole; SAPI's are small
_RESPONSE_DROP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                            "transfer-encoding", "upgrade"})


@dataclasses.dataclass(frozen=True)
class Chosen:
    """The stored token a session uses for one provider."""

    provider: str
    token_name: str
    ref: Ref


@dataclasses.dataclass
class Endpoint:
    chosen: Chosen
    placeholder: str  # the credential the SDK is given; for SigV4, the secret key it signs with
    key_id: str = ""  # SigV4: the access key id that goes with it (a name, not a proof)
    url: str = ""  # http://127.0.0.1:PORT, once listening
    runner: web.ServerRunner | None = None
    # The HTTPS-proxy form (session_proxy), for SDKs that build URLs from host names:
    proxy: SessionProxy | None = None
    bundle: pathlib.Path | None = None  # the session CA and the system roots, for the SDK's CA variables
    standins: dict[str, float] = dataclasses.field(default_factory=dict)  # stand-in bearer -> expiry (monotonic)

    @property
    def provider(self) -> str:
        return self.chosen.provider


@dataclasses.dataclass
class Session:
    id: str
    endpoints: dict[str, Endpoint]
    # For luna-quantum's LUNA_<PROVIDER>_TOKEN variables: placeholder -> (body field, token).
    # The SDK copies them into qpu_tokens; the Luna hop swaps each for its stored token.
    luna_swaps: dict[str, tuple[str, Chosen]]
    skipped: list[str]
    persistent: bool  # `qpu-broker env`: ends with End or lock, not with a stream

    def env(self, schemes: dict[str, Scheme]) -> dict[str, str]:
        """The variables the providers' SDKs read, pointing at this session."""
        # requests- and botocore-based SDKs send even loopback traffic to a configured proxy.
        out: dict[str, str] = {"NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK}
        for provider, endpoint in self.endpoints.items():
            for name, template in schemes[provider].session_env.items():
                out[name] = template.format(url=endpoint.url, credential=endpoint.placeholder, key_id=endpoint.key_id,
                                            proxy=endpoint.proxy.proxy_url() if endpoint.proxy else "",
                                            ca_bundle=str(endpoint.bundle or ""))
        for placeholder, (field, _) in self.luna_swaps.items():
            out[LUNA_ENV.get(field) or LUNA_AWS_ENV[field]] = placeholder
        return out

    def unset(self, schemes: dict[str, Scheme]) -> list[str]:
        return sorted({name for provider in self.endpoints for name in schemes[provider].session_unset})


class Sessions:
    def __init__(self, forwarder: Forwarder, resolver: Resolver, vault: Vault, schemes: dict[str, Scheme],
                 config: Callable[[], Config], bundle_dir: pathlib.Path) -> None:
        self._bundle_dir = bundle_dir  # CA bundles of proxy sessions (public data), one file each
        self._forwarder = forwarder
        self._resolver = resolver
        self._vault = vault
        self._schemes = schemes
        self._config = config
        self._sessions: dict[str, Session] = {}

    def on_event(self, event: Event) -> None:
        if isinstance(event, Locked):  # `env` sessions end on lock; held ones end with their command
            for session in [s for s in self._sessions.values() if s.persistent]:
                asyncio.get_running_loop().create_task(self.end(session.id))

    # -- opening and ending ------------------------------------------------------
    async def open(self, refs: dict[str, Ref], *, persistent: bool) -> Session:
        skipped: list[str] = []
        chosen = {p: c for p in self._schemes if (c := self._choose(p, refs.get(p), skipped)) is not None}
        endpoints = {p: _endpoint(c, self._schemes[p]) for p, c in chosen.items() if _served(self._schemes[p])}
        luna_swaps = _luna_swaps(chosen) if "luna" in endpoints else {}
        swapped = {c.provider for _, c in luna_swaps.values()}
        for provider in refs:
            if provider not in endpoints and provider not in swapped:
                skipped.append(f"{provider}: exec sessions do not serve {provider} yet, except inside Luna "
                               "requests; use Forward, or the SDK transports (botocore signer, httpx/requests "
                               "transports)")
        if not endpoints:
            raise FailedPreconditionError(
                "no provider to serve in this session: store a token (qpu-broker token add) or name one with "
                "--token PROVIDER=NAME" + (f" ({'; '.join(skipped)})" if skipped else ""))
        session = Session(secrets.token_hex(8), endpoints, luna_swaps, skipped, persistent)
        try:
            for endpoint in endpoints.values():
                await self._listen(session, endpoint)
        except BaseException:
            await self._close(session)
            raise
        self._sessions[session.id] = session
        log.info("session %s opened: %s", session.id,
                 ", ".join(f"{c.provider} (token {c.token_name!r})" for c in chosen.values()))
        return session

    def _choose(self, provider: str, ref: Ref | None, skipped: list[str]) -> Chosen | None:
        if ref is not None:
            if ref.kind == INLINE:
                raise InvalidArgumentError("a session uses stored tokens: name one with --token PROVIDER=NAME")
            resolved = self._resolver.resolve(provider, {provider: ref})  # it exists and opens: fail now, not later
            return Chosen(provider, resolved.name or ref.name or ref.id, ref)
        records, total = self._vault.list(provider, 3, 0)
        if total == 1:
            return Chosen(provider, records[0].name, Ref(PERSONAL, id=records[0].id))
        if total > 1:
            default = self._vault.defaults().get(provider)
            try:
                record = self._vault.find(PERSONAL, token_id=default) if default else None
            except NotFoundError:
                record = None  # the default was deleted: as if there were none
            if record is not None:
                return Chosen(provider, record.name, Ref(PERSONAL, id=record.id))
            names = ", ".join(repr(r.name) for r in records) + (", ..." if total > len(records) else "")
            skipped.append(f"{provider}: {total} personal tokens ({names}): pick one with --token {provider}=NAME, "
                           f"or mark one with 'qpu-broker token default NAME'")
        return None

    async def end(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        await self._close(session)
        log.info("session %s ended", session_id)
        return True

    async def end_persistent(self) -> int:
        ids = [s.id for s in self._sessions.values() if s.persistent]
        for session_id in ids:
            await self.end(session_id)
        return len(ids)

    async def close(self) -> None:
        for session_id in list(self._sessions):
            await self.end(session_id)

    async def _close(self, session: Session) -> None:
        for endpoint in session.endpoints.values():
            if endpoint.runner is not None:
                await endpoint.runner.cleanup()
                endpoint.runner = None
            if endpoint.proxy is not None:
                await endpoint.proxy.close()
                endpoint.proxy = None
            if endpoint.bundle is not None:
                endpoint.bundle.unlink(missing_ok=True)
            endpoint.standins.clear()

    # -- the loopback endpoint -----------------------------------------------------
    async def _listen(self, session: Session, endpoint: Endpoint) -> None:
        from aiohttp import web

        scheme = self._schemes[endpoint.provider]
        if isinstance(scheme, ExchangeScheme) and scheme.session_exchange:
            await self._listen_as_proxy(session, endpoint, scheme)
            return

        runner = web.ServerRunner(web.Server(lambda request: self._handle(session, endpoint, request)),
                                  access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        endpoint.runner = runner
        host, port = runner.addresses[0][:2]
        endpoint.url = f"http://{host}:{port}"

    async def _listen_as_proxy(self, session: Session, endpoint: Endpoint, scheme: ExchangeScheme) -> None:
        from qpu_broker.forward.session_ca import make_session_ca, trust_bundle
        from qpu_broker.forward.session_proxy import SessionProxy

        ca = make_session_ca(scheme.session_tls_names)
        ensure_private_dir(self._bundle_dir, strict=True)
        endpoint.bundle = self._bundle_dir / f"{session.id}-{endpoint.provider}.pem"
        endpoint.bundle.write_bytes(trust_bundle(ca.ca_pem))
        endpoint.proxy = SessionProxy(endpoint.placeholder, ca, lambda host, port: port == 443 and scheme.official(host),
                                      lambda host, request: self._handle_proxied(session, endpoint, scheme, host, request))
        await endpoint.proxy.start()
        endpoint.url = endpoint.proxy.url

    async def _handle_proxied(self, session: Session, endpoint: Endpoint, scheme: ExchangeScheme, host: str,
                              request: web.BaseRequest) -> web.StreamResponse:
        """A request inside a TLS tunnel to one of the provider's hosts. The SDK's key exchange
        is answered here with a session-scoped stand-in bearer; every other request must carry a
        live stand-in, and goes on with the real bearer (the forwarder's exchange)."""
        from aiohttp import web

        now = time.monotonic()
        for standin in [b for b, expiry in endpoint.standins.items() if expiry <= now]:
            del endpoint.standins[standin]
        if (host, request.path) == scheme.session_exchange and request.method == "POST":
            form = await request.post()
            key = scheme.exchange_key({k: str(v) for k, v in form.items()})
            if key is None or not hmac.compare_digest(key.encode(), endpoint.placeholder.encode()):
                _log_refused(endpoint)
                answer, status = scheme.exchange_refused()
                return web.json_response(answer, status=status)
            bearer, lifetime, answer = scheme.standin()
            if len(endpoint.standins) >= MAX_STANDINS:
                endpoint.standins.pop(next(iter(endpoint.standins)))
            endpoint.standins[bearer] = now + lifetime
            return web.json_response(answer)
        given = request.headers.get("Authorization", "").encode()
        if not any(hmac.compare_digest(given, f"Bearer {b}".encode()) for b in endpoint.standins):
            _log_refused(endpoint)
            return _error(web, 401, f"this {endpoint.provider} session takes only the bearer its own key exchange "
                                    "gave out")
        origin = self._config().host_endpoint(endpoint.provider, host) or f"https://{host}"
        return await self._relay(session, endpoint, request, origin, _body(request))

    def _admitted(self, endpoint: Endpoint, request: web.BaseRequest) -> bool:
        scheme = self._schemes[endpoint.provider]
        assert isinstance(scheme, HeaderScheme)
        given = request.headers.get(scheme.header, "").encode()
        return hmac.compare_digest(given, (scheme.prefix + endpoint.placeholder).encode())

    async def _handle(self, session: Session, endpoint: Endpoint, request: web.BaseRequest) -> web.StreamResponse:
        from aiohttp import web

        if not request.raw_path.startswith("/"):
            return _error(web, 400, "a session endpoint takes origin-form requests (a path), not a proxy's")
        refused = _error(web, 401, f"this {endpoint.provider} endpoint of a qpu-broker session takes only the "
                                   "session's own credential")
        scheme = self._schemes[endpoint.provider]
        origin = self._config().endpoint(endpoint.provider)
        body, region, service = _body(request), "", ""
        if scheme.signs:
            limit = self._config().forward_max_body_bytes
            raw = await request.content.read(limit + 1)
            if len(raw) > limit:
                return _error(web, 413, f"the request body is over the limit of {limit} bytes: raise "
                                        "forward.max_body_bytes if this is intended")
            verified = _verified(endpoint, request, raw)
            if verified is None:
                _log_refused(endpoint)
                return refused
            if verified.service not in SIGNED_SERVICES:
                return _error(web, 403, f"this session signs for {', '.join(SIGNED_SERVICES)} only, not "
                                        f"{verified.service}: use Sign or Forward for other AWS services")
            region, service = verified.region, verified.service
            origin = origin or f"https://{service}.{region}.amazonaws.com"
            body = _once(raw)
        elif not self._admitted(endpoint, request):
            _log_refused(endpoint)
            return refused
        return await self._relay(session, endpoint, request, origin or f"https://{scheme.hosts[0]}", body, region,
                                 service)

    async def _relay(self, session: Session, endpoint: Endpoint, request: web.BaseRequest, origin: str,
                     body: AsyncIterator[bytes], region: str = "", service: str = "") -> web.StreamResponse:
        """An admitted request, on to `origin` with the real credential; the answer streamed back."""
        from aiohttp import web

        scheme = self._schemes[endpoint.provider]
        dropped = HOP_BY_HOP | {"expect"} | ({"accept-encoding"} if scheme.session_rewrites_urls else set())
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in dropped]
        swaps = {p: (f, c.ref) for p, (f, c) in session.luna_swaps.items()} if endpoint.provider == "luna" else {}
        call = ForwardCall(endpoint.provider, request.method, origin + request.raw_path, headers,
                           {endpoint.provider: endpoint.chosen.ref}, region=region, service=service, swaps=swaps)
        try:
            reply = await self._forwarder.forward(call, body)
        except QpuBrokerError as exc:
            if isinstance(exc, NotFoundError):
                return _error(web, 404, f"the {endpoint.provider} token {endpoint.chosen.token_name!r} of this session "
                                        f"is gone ({exc})")
            return _error(web, 423 if isinstance(exc, LockedError) else _HTTP_STATUS.get(exc.code, 500), str(exc))
        headers = [(k, v) for k, v in reply.headers if k.lower() not in _RESPONSE_DROP]
        if scheme.session_rewrites_urls and _rewritable(headers):
            return await _rewritten(web, reply.status, headers, reply.body, origin, endpoint.url)
        response = web.StreamResponse(status=reply.status)
        for name, value in headers:
            response.headers.add(name, value)
        await response.prepare(request)
        async for chunk in reply.body:
            await response.write(chunk)
        await response.write_eof()
        return response


def _rewritable(headers: list[tuple[str, str]]) -> bool:
    """JSON as plain bytes (the session asked for no compression; an answer compressed anyway
    is passed on as it is)."""
    if next((v for k, v in headers if k.lower() == "content-encoding"), "identity").strip().lower() != "identity":
        return False
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "").split(";")[0].strip().lower()
    return content_type.endswith(("/json", "+json"))


async def _rewritten(web, status: int, headers: list[tuple[str, str]], body: AsyncIterator[bytes], origin: str,
                     session_url: str) -> web.Response:
    """A JSON answer with the upstream origin's absolute URLs pointing at the session instead.
    Only the origin this request went to: a URL elsewhere is not the session's to serve."""
    from multidict import CIMultiDict

    chunks, size = [], 0
    async for chunk in body:
        size += len(chunk)
        if size > REWRITE_LIMIT:
            return _error(web, 502, f"a JSON answer of more than {REWRITE_LIMIT} bytes from {origin}: too large "
                                    "for a session to rewrite its URLs")
        chunks.append(chunk)
    text = b"".join(chunks)
    for old, new in ((origin + "/", session_url + "/"), (_escaped(origin + "/"), _escaped(session_url + "/"))):
        text = text.replace(old.encode(), new.encode())
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-length", "etag")]
    return web.Response(status=status, body=text, headers=CIMultiDict(kept))


def _escaped(url: str) -> str:
    return url.replace("/", "\\/")  # JSON may write "/" as "\/"


def _served(scheme: Scheme) -> bool:
    proxied = isinstance(scheme, ExchangeScheme) and bool(scheme.session_exchange)
    return (isinstance(scheme, HeaderScheme) or scheme.signs or proxied) and bool(scheme.session_env)


def _endpoint(chosen: Chosen, scheme: Scheme) -> Endpoint:
    # An access key id's shape (20 upper-case characters), recognisable as ours.
    return Endpoint(chosen, _placeholder(), "QBSA" + secrets.token_hex(8).upper() if scheme.signs else "")


def _luna_swaps(chosen: dict[str, Chosen]) -> dict[str, tuple[str, Chosen]]:
    """A placeholder per LUNA_<PROVIDER>_TOKEN field the chosen tokens fill. AWS: all three
    parts, even for a key without a session token, because luna-quantum 1.3 fails unless it
    has all three once it has one (token_provider.py, AWSQpuTokens); the Luna hop sends the
    stored token's own parts."""
    out: dict[str, tuple[str, Chosen]] = {}
    for provider, c in chosen.items():
        fields = AWS_SPLIT_FIELDS if provider == "aws" else (provider,) if provider in LUNA_ENV else ()
        for field in fields:
            if field != "luna":
                out[_placeholder()] = (field, c)
    return out


def _log_refused(endpoint: Endpoint) -> None:
    log.warning("session endpoint for %s: a request without this session's credential was refused",
                endpoint.provider)


def _verified(endpoint: Endpoint, request: web.BaseRequest, body: bytes) -> sigv4.Verified | None:
    """The SDK's SigV4 signature checked against the placeholder secret: possession, not a name."""
    url = parse_url(endpoint.url + request.raw_path, "the session request's URL", verbatim=True)
    return sigv4.verify(request.method, url, list(request.headers.items()), hashlib.sha256(body).hexdigest(),
                        access_key=endpoint.key_id, secret_key=endpoint.placeholder,
                        now=datetime.datetime.now(datetime.UTC), skew=SIGNATURE_SKEW)


async def _once(raw: bytes) -> AsyncIterator[bytes]:
    yield raw


def _placeholder() -> str:
    return PLACEHOLDER_PREFIX + secrets.token_urlsafe(32)


async def _body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


def _error(web, status: int, message: str) -> web.Response:
    """An answer from qpu-broker itself, never from the provider: said so in a header too."""
    return web.json_response({"detail": f"qpu-broker: {message}"}, status=status,
                             headers={"X-Qpu-Broker-Error": "1"})
