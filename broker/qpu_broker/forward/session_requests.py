"""What a session endpoint does with a request: admit it only with the session's own
credential (a header placeholder, a SigV4 signature made with the placeholder secret, or a
stand-in bearer the session gave out), then relay it through the Forwarder with the real
credential, and stream the answer back (D-Wave's JSON with its URLs pointed at the session)."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from qpu_broker_client.errors import (
    DeadlineExceededError,
    LockedError,
    NotFoundError,
    PermissionDeniedError,
    QpuBrokerError,
    UnavailableError,
)

from qpu_broker.common.config import Config
from qpu_broker.common.url import parse_url
from qpu_broker.forward import session_results
from qpu_broker.forward.forwarder import (
    ForwardCall,
    Forwarder,
    content_encoding,
    read_whole,
    without_length,
)
from qpu_broker.forward.session_gate import note_now
from qpu_broker.forward.session_model import Endpoint, Session
from qpu_broker.forward.session_urls import REWRITE_LIMIT, rewritable, rewritten, routed
from qpu_broker.providers import sigv4
from qpu_broker.providers.aws import REGION, SERVICE
from qpu_broker.providers.base import HOP_BY_HOP, ExchangeScheme
from qpu_broker.providers.custom import presents_in_header
from qpu_broker.tokens.kinds import ORGANIZATION

if TYPE_CHECKING:
    from aiohttp import web


log = logging.getLogger(__name__)
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 412, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 502,
    "DEADLINE_EXCEEDED": 504,
}
# AWS services a session signs for: Braket's API, and S3 for the results of Braket's tasks only
# (session_results). STS (amazon-braket-sdk's caller identity, for a default bucket) and the rest
# are other services a Braket credential does not reach through a session.
SIGNED_SERVICES = (SERVICE,)
S3 = "s3"
SIGNATURE_SKEW = datetime.timedelta(minutes=5)  # AWS itself allows 15; a session is local
MAX_STANDINS = 64  # live stand-in bearers per session: an SDK refreshes its one now and then
_RESPONSE_DROP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                            "transfer-encoding", "upgrade"})



class SessionRequests:
    """A session's requests: admitted by the form the session opened with (what its command was given);
    sent on by the forwarder, under the credential's rules as they are now (an org's custom provider
    redefined or removed binds an open session at its next request)."""

    def __init__(self, forwarder: Forwarder, config: Callable[[], Config]) -> None:
        self._forwarder = forwarder
        self._config = config

    async def proxied(self, session: Session, endpoint: Endpoint, scheme: ExchangeScheme, host: str,
                              request: web.BaseRequest) -> web.StreamResponse:
        """A request inside a TLS tunnel to one of the provider's hosts. The SDK's key exchange
        is answered here with a session-scoped stand-in bearer; every other request must carry a
        live stand-in (or, for a custom provider, the placeholder as its bearer), and goes on with
        the real bearer (the forwarder's exchange)."""
        from aiohttp import web

        exchange_host, exchange_path = scheme.session_exchange
        # Answered here, never sent on: the exchange, and anything else on a host that is for the exchange alone.
        if host == exchange_host and (request.raw_path == exchange_path or host == scheme.exchange_only_host):
            if request.raw_path != exchange_path or request.method != "POST":
                return _error(web, 403, f"this session answers {exchange_host}'s {exchange_path} itself and sends "
                                        f"nothing else there")
            form = await request.post()
            return _exchange_answer(web, endpoint, scheme, scheme.exchange_key({k: str(v) for k, v in form.items()}))
        if not _standin_live(endpoint, request.headers.get("Authorization", "")) \
                and not (presents_in_header(scheme) and self._admitted(endpoint, request)):
            _log_refused(endpoint)
            return _error(web, 401, f"this {endpoint.provider} session takes only the bearer its own key exchange "
                                    "gave out")
        # Which calls go on with the real bearer is the forwarder's to judge, on the URL it sends.
        origin = self._config().host_endpoint(endpoint.provider, host) or f"https://{host}"
        return await self._relay(session, endpoint, request, origin, request.raw_path, _body(request), official_host=host)

    async def proxied_header(self, session: Session, endpoint: Endpoint, host: str,
                             request: web.BaseRequest) -> web.StreamResponse:
        """A request inside a TLS tunnel to an official host of a custom provider whose SDK names its
        hosts: admitted with the placeholder where the key goes, sent on with the real one."""
        from aiohttp import web

        if not self._admitted(endpoint, request):
            _log_refused(endpoint)
            return _error(web, 401, f"this {endpoint.provider} session takes only the session's own credential")
        origin = self._config().host_endpoint(endpoint.provider, host) or f"https://{host}"
        return await self._relay(session, endpoint, request, origin, request.raw_path, _body(request),
                                 official_host=host)

    def _admitted(self, endpoint: Endpoint, request: web.BaseRequest) -> bool:
        scheme = endpoint.scheme
        assert presents_in_header(scheme)
        given = request.headers.get(scheme.header, "").encode()
        return hmac.compare_digest(given, (scheme.prefix + endpoint.placeholder + scheme.suffix).encode())

    async def direct(self, session: Session, endpoint: Endpoint, request: web.BaseRequest,
                     proven: Callable[[], None]) -> web.StreamResponse:
        """A request to a loopback endpoint; `proven` is called once it has shown the session's
        credential (its connection then keeps its place: session_gate)."""
        from aiohttp import web

        if not request.raw_path.startswith("/"):
            return _error(web, 400, "a session endpoint takes origin-form requests (a path), not a proxy's")
        refused = _error(web, 401, f"this {endpoint.provider} endpoint of a qpu-broker session takes only the "
                                   "session's own credential")
        scheme = endpoint.scheme
        origin = self._config().endpoint(endpoint.provider)
        if isinstance(scheme, ExchangeScheme) and not presents_in_header(scheme):  # Q-CTRL's key exchange
            return await self._exchanging(session, endpoint, scheme, request, proven, origin)
        body, region, service = _body(request), "", ""
        # The official host asked for: the default one, or another under /@HOST/ (session_urls).
        host, path = (scheme.hosts[0] if scheme.session_rewrites_urls else ""), request.raw_path
        if scheme.session_rewrites_urls and (named := routed(request.raw_path)) is not None:
            host, path = named
            if not scheme.official(host):
                return _error(web, 403, f"{host} is not an official {endpoint.provider} host: a session sends "
                                        f"only to {', '.join(scheme.hosts)}")
            origin = self._config().host_endpoint(endpoint.provider, host) or f"https://{host}"
        if scheme.signs:
            limit = self._config().forward_max_body_bytes
            raw = await read_whole(request.content.iter_any(), limit)  # the signature covers its hash
            if raw is None:
                return _error(web, 413, f"the request body is over the limit of {limit} bytes: raise "
                                        "forward.max_body_bytes if this is intended")
            verified = _verified(endpoint, request, raw)
            if verified is None:
                _log_refused(endpoint)
                return refused
            proven()
            if not REGION.fullmatch(verified.region):
                return _error(web, 400, f"{verified.region!r} is not an AWS region name")
            if verified.service == S3:
                return await self._s3_read(session, endpoint, request, verified.region)
            if verified.service not in SIGNED_SERVICES:
                return _aws_error(web, verified.service, 403, f"this session signs for {', '.join(SIGNED_SERVICES)} "
                                  f"(and reads its tasks' results from S3), not {verified.service}: call "
                                  f"{verified.service} outside `qpu-broker exec`, or with Sign or Forward")
            region, service = verified.region, verified.service
            origin = origin or f"https://{service}.{region}.amazonaws.com"
            body = _once(raw)
            if session_results.is_task_lookup(request.method, request.raw_path):
                return await self._relay(session, endpoint, request, origin, path, body, region, service,
                                         learn=lambda answer: session_results.learn(endpoint.s3_results, answer))
        elif self._admitted(endpoint, request):
            proven()
        else:
            _log_refused(endpoint)
            return refused
        return await self._relay(session, endpoint, request, origin or f"https://{scheme.hosts[0]}", path, body, region,
                                 service, official_host=host)

    async def _exchanging(self, session: Session, endpoint: Endpoint, scheme: ExchangeScheme,
                          request: web.BaseRequest, proven: Callable[[], None], origin: str) -> web.StreamResponse:
        """A loopback endpoint of an exchange provider (Q-CTRL): the placeholder, the first segment of
        the session's URL, admits a request (qctrl-client sends its schema introspection with no
        credential at all). The SDK's key exchange, a JSON body presenting a key, is answered here
        with a stand-in bearer; a bearer the SDK sends must be a live stand-in; the rest goes on
        with the real bearer, its path without the placeholder."""
        from aiohttp import web

        prefix = "/" + endpoint.placeholder
        given, rest = request.raw_path[:len(prefix)], request.raw_path[len(prefix):]
        if not hmac.compare_digest(given.encode(), prefix.encode()) or rest[:1] not in ("", "/", "?"):
            _log_refused(endpoint)
            return _error(web, 401, f"this {endpoint.provider} endpoint of a qpu-broker session takes only requests "
                                    "to the URL the session gave out")
        proven()
        limit = self._config().forward_max_body_bytes
        raw = await read_whole(request.content.iter_any(), limit)  # read whole: a key exchange is told by its body
        if raw is None:
            return _error(web, 413, f"the request body is over the limit of {limit} bytes: raise "
                                    "forward.max_body_bytes if this is intended")
        doc = _json(raw)  # read once: for the key exchange, and for the placeholder however it is escaped
        key = scheme.exchange_key(doc if isinstance(doc, dict) else {}, request.headers)
        if key is not None:
            return _exchange_answer(web, endpoint, scheme, key)
        bearer = request.headers.get("Authorization")
        if bearer is not None and not _standin_live(endpoint, bearer):
            _log_refused(endpoint)
            return _error(web, 401, f"this {endpoint.provider} session takes only the bearer its own key exchange "
                                    "gave out")
        if content_encoding(list(request.headers.items())) != "identity":  # the check below reads the body as sent
            return _error(web, 415, f"this {endpoint.provider} endpoint of a qpu-broker session takes uncompressed "
                                    f"bodies (the {endpoint.provider} SDK sends no other)")
        if _holds(raw, doc, endpoint.placeholder):
            return _error(web, 400, "the request body holds this session's placeholder, which goes to no provider: "
                                    f"the {endpoint.provider} SDK presents it only in its key exchange")
        return await self._relay(session, endpoint, request, origin or f"https://{scheme.hosts[0]}",
                                 rest if rest.startswith("/") else "/" + rest, _once(raw))

    async def _s3_read(self, session: Session, endpoint: Endpoint, request: web.BaseRequest,
                       region: str) -> web.StreamResponse:
        """A Braket task's results from S3, if this session looked the task up (session_results)."""
        from aiohttp import web

        try:
            if endpoint.chosen.ref.kind == ORGANIZATION:
                raise PermissionDeniedError(
                    "a session does not read S3 with an organization's AWS token (the org allows Braket's "
                    "hosts, not its buckets): ask an org admin for the results, or run with a personal token")
            read = session_results.judge(endpoint.s3_results, request.method, request.raw_path, region)
        except PermissionDeniedError as exc:
            return _aws_error(web, S3, 403, str(exc))
        origin = self._config().host_endpoint(endpoint.provider, read.host) or f"https://{read.host}"
        return await self._relay(session, endpoint, request, origin, read.path, _once(b""), region, S3,
                                 granted_host=read.host)

    async def _relay(self, session: Session, endpoint: Endpoint, request: web.BaseRequest, origin: str, path: str,
                     body: AsyncIterator[bytes], region: str = "", service: str = "",
                     official_host: str = "", granted_host: str = "",
                     learn: Callable[[bytes], None] | None = None) -> web.StreamResponse:
        """An admitted request, on to `origin` + `path` with the real credential (`origin` is the
        official host's, or the configured stand-in for it); the answer streamed back (read whole
        first where `learn` reads it)."""
        from aiohttp import web

        scheme = endpoint.scheme
        plain = scheme.session_rewrites_urls or learn is not None  # an answer read here is asked uncompressed
        dropped = HOP_BY_HOP | {"expect"} | ({"accept-encoding"} if plain else set())
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in dropped]
        swaps = {p: (f, c.ref) for p, (f, c) in session.luna_swaps.items()} if scheme.fills_body_tokens else {}
        call = ForwardCall(endpoint.provider, request.method, origin + path, headers,
                           {endpoint.provider: endpoint.chosen.ref}, region=region, service=service, session=True,
                           swaps=swaps, official_host=official_host, granted_host=granted_host,
                           session_id=session.id, command=session.command)
        try:
            reply = await self._forwarder.forward(call, body)
        except QpuBrokerError as exc:
            if isinstance(exc, (UnavailableError, DeadlineExceededError)) and note_now(f"upstream:{endpoint.provider}"):
                # The SDK shows the answer below, if it shows anything; the daemon's owner reads this.
                log.warning("session %s (%s) for %s: %s (logged once a minute at most)", session.id,
                            session.command or "no command named", endpoint.provider, exc)
            if isinstance(exc, NotFoundError):
                return _error(web, 404, f"the {endpoint.provider} token {endpoint.chosen.token_name!r} of this session "
                                        f"is gone ({exc})")
            return _error(web, 423 if isinstance(exc, LockedError) else _HTTP_STATUS.get(exc.code, 500), str(exc))
        headers = [(k, v) for k, v in reply.headers if k.lower() not in _RESPONSE_DROP]
        try:
            if scheme.session_rewrites_urls and rewritable(headers):
                return await rewritten(web, reply.status, headers, reply.body, scheme, endpoint.url, origin,
                                       official_host, _error)
            if learn is not None and reply.status == 200 and rewritable(headers):
                return await _read_by(web, learn, reply.status, headers, reply.body)
            response = web.StreamResponse(status=reply.status)
            for name, value in headers:
                response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in reply.body:
                await response.write(chunk)
            await response.write_eof()
            return response
        except QpuBrokerError as exc:  # the provider broke off mid-answer: so does the session, no traceback
            log.warning("session endpoint for %s: %s", endpoint.provider, exc)
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=502)  # never sent: the connection is gone



def _exchange_answer(web, endpoint: Endpoint, scheme: ExchangeScheme, key: str | None) -> web.Response:
    """The SDK's key exchange, answered by the session: a new stand-in bearer for the placeholder,
    the provider's own refusal for anything else."""
    if key is None or not hmac.compare_digest(key.encode(), endpoint.placeholder.encode()):
        _log_refused(endpoint)
        answer, status = scheme.exchange_refused()
        return web.json_response(answer, status=status)
    bearer, lifetime, answer = scheme.standin()
    register_standin(endpoint, bearer, lifetime)
    return web.json_response(answer)


def register_standin(endpoint: Endpoint, bearer: str, lifetime: float) -> None:
    """A stand-in bearer the session gave out, live for `lifetime` seconds (the oldest dropped past MAX_STANDINS)."""
    _drop_expired(endpoint)
    if len(endpoint.standins) >= MAX_STANDINS:
        endpoint.standins.pop(next(iter(endpoint.standins)))
    endpoint.standins[bearer] = time.monotonic() + lifetime


def _standin_live(endpoint: Endpoint, authorization: str) -> bool:
    """Whether `authorization` is "Bearer S" for a stand-in S this session gave out that has not expired."""
    _drop_expired(endpoint)
    given = authorization.encode()
    return any(hmac.compare_digest(given, f"Bearer {b}".encode()) for b in endpoint.standins)


def _drop_expired(endpoint: Endpoint) -> None:
    now = time.monotonic()
    for standin in [b for b, expiry in endpoint.standins.items() if expiry <= now]:
        del endpoint.standins[standin]


def _holds(raw: bytes, doc: object, placeholder: str) -> bool:
    """Whether a body carries the placeholder: as bytes, or in its JSON (`doc`) however its strings
    are escaped (`\\u0071bs_…` is the same string to the provider's parser)."""
    if placeholder.encode() in raw:
        return True
    try:
        return doc is not None and placeholder in json.dumps(doc, ensure_ascii=False)
    except RecursionError:  # too deep to write back: not a body to pass on unread
        return True


def _json(raw: bytes) -> object:
    """The body's JSON value; None when it is none (not JSON, or nested past the parser's depth:
    then no key exchange either)."""
    try:
        return json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None


def _log_refused(endpoint: Endpoint) -> None:
    # Once a minute per provider: any local process can send refused requests as fast as it likes.
    if note_now(f"refused:{endpoint.provider}"):
        log.warning("session endpoint for %s: a request without this session's credential was refused "
                    "(logged once a minute at most)", endpoint.provider)


def _verified(endpoint: Endpoint, request: web.BaseRequest, body: bytes) -> sigv4.Verified | None:
    """The SDK's SigV4 signature checked against the placeholder secret: possession, not a name."""
    url = parse_url(endpoint.url + request.raw_path, "the session request's URL", verbatim=True)
    return sigv4.verify(request.method, url, list(request.headers.items()), hashlib.sha256(body).hexdigest(),
                        access_key=endpoint.key_id, secret_key=endpoint.placeholder,
                        now=datetime.datetime.now(datetime.UTC), skew=SIGNATURE_SKEW)


async def _once(raw: bytes) -> AsyncIterator[bytes]:
    yield raw


async def _body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


async def _read_by(web, learn: Callable[[bytes], None], status: int, headers: list[tuple[str, str]],
                   body: AsyncIterator[bytes]) -> web.Response:
    """A JSON answer read whole by `learn`, then passed on as it came."""
    from multidict import CIMultiDict

    text = await read_whole(body, REWRITE_LIMIT)
    if text is None:
        return _error(web, 502, f"a JSON answer of more than {REWRITE_LIMIT} bytes: too large for a session to read")
    learn(text)
    return web.Response(status=status, body=text, headers=CIMultiDict(without_length(headers)))


def _aws_error(web, service: str, status: int, message: str) -> web.Response:
    """A refusal in the shape the AWS SDK parses for that service, so the user reads the message:
    S3's XML error, the query protocol's (STS, IAM...), or restJson's (Braket)."""
    from xml.sax.saxutils import escape

    if service == SERVICE:
        return _error(web, status, message)
    error = f"<Error><Code>AccessDenied</Code><Message>{escape('qpu-broker: ' + message)}</Message></Error>"
    body = error if service == S3 else f"<ErrorResponse>{error}</ErrorResponse>"
    return web.Response(status=status, body=body.encode(), content_type="application/xml",
                        headers={"X-Qpu-Broker-Error": "1"})


def _error(web, status: int, message: str) -> web.Response:
    """An answer from qpu-broker itself, never from the provider: said so in a header too. The
    message under the keys SDKs read an error from: `detail` (FastAPI's, Luna's), `message` and
    `errors[0].message` (IBM Cloud's SDK core, which qiskit-ibm-runtime chains; GraphQL's, Q-CTRL's)."""
    text = f"qpu-broker: {message}"
    return web.json_response({"detail": text, "message": text, "errors": [{"message": text}]}, status=status,
                             headers={"X-Qpu-Broker-Error": "1"})
