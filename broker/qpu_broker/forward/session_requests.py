"""What a session endpoint does with a request: admit it only with the session's own
credential (a header placeholder, a SigV4 signature made with the placeholder secret, or a
stand-in bearer the session gave out), then relay it through the Forwarder with the real
credential, and stream the answer back (D-Wave's JSON with its URLs pointed at the session)."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from qpu_broker_client.errors import (
    LockedError,
    NotFoundError,
    PermissionDeniedError,
    QpuBrokerError,
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
from qpu_broker.providers import sigv4
from qpu_broker.providers.aws import REGION, SERVICE
from qpu_broker.providers.base import HOP_BY_HOP, ExchangeScheme, HeaderScheme, Scheme
from qpu_broker.tokens.vault import ORGANIZATION

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
REWRITE_LIMIT = 16 << 20  # JSON answers whose URLs a session rewrites are read whole; SAPI's are small
_RESPONSE_DROP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                            "transfer-encoding", "upgrade"})



class SessionRequests:
    def __init__(self, forwarder: Forwarder, schemes: dict[str, Scheme], config: Callable[[], Config]) -> None:
        self._forwarder = forwarder
        self._schemes = schemes
        self._config = config

    async def proxied(self, session: Session, endpoint: Endpoint, scheme: ExchangeScheme, host: str,
                              request: web.BaseRequest) -> web.StreamResponse:
        """A request inside a TLS tunnel to one of the provider's hosts. The SDK's key exchange
        is answered here with a session-scoped stand-in bearer; every other request must carry a
        live stand-in, and goes on with the real bearer (the forwarder's exchange)."""
        from aiohttp import web

        now = time.monotonic()
        for standin in [b for b, expiry in endpoint.standins.items() if expiry <= now]:
            del endpoint.standins[standin]
        exchange_host, exchange_path = scheme.session_exchange
        if host == exchange_host:  # answered here, whatever it is: nothing goes to the exchange host
            if request.raw_path != exchange_path or request.method != "POST":
                return _error(web, 403, f"this session answers {exchange_host}'s {exchange_path} itself and sends "
                                        f"nothing else there")
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
        # Which calls go on with the real bearer is the forwarder's to judge, on the URL it sends.
        origin = self._config().host_endpoint(endpoint.provider, host) or f"https://{host}"
        return await self._relay(session, endpoint, request, origin, _body(request), official_host=host)

    def _admitted(self, endpoint: Endpoint, request: web.BaseRequest) -> bool:
        scheme = self._schemes[endpoint.provider]
        assert isinstance(scheme, HeaderScheme)
        given = request.headers.get(scheme.header, "").encode()
        return hmac.compare_digest(given, (scheme.prefix + endpoint.placeholder).encode())

    async def direct(self, session: Session, endpoint: Endpoint, request: web.BaseRequest,
                     proven: Callable[[], None]) -> web.StreamResponse:
        """A request to a loopback endpoint; `proven` is called once it has shown the session's
        credential (its connection then keeps its place: session_gate)."""
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
                return await self._relay(session, endpoint, request, origin, body, region, service,
                                         learn=lambda answer: session_results.learn(endpoint.s3_results, answer))
        elif self._admitted(endpoint, request):
            proven()
        else:
            _log_refused(endpoint)
            return refused
        return await self._relay(session, endpoint, request, origin or f"https://{scheme.hosts[0]}", body, region,
                                 service)

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
        return await self._relay(session, endpoint, request, origin, _once(b""), region, S3, path=read.path,
                                 granted_host=read.host)

    async def _relay(self, session: Session, endpoint: Endpoint, request: web.BaseRequest, origin: str,
                     body: AsyncIterator[bytes], region: str = "", service: str = "",
                     official_host: str = "", path: str = "", granted_host: str = "",
                     learn: Callable[[bytes], None] | None = None) -> web.StreamResponse:
        """An admitted request, on to `origin` (+ `path`, by default the request's) with the real
        credential; the answer streamed back (read whole first where `learn` reads it)."""
        from aiohttp import web

        scheme = self._schemes[endpoint.provider]
        plain = scheme.session_rewrites_urls or learn is not None  # an answer read here is asked uncompressed
        dropped = HOP_BY_HOP | {"expect"} | ({"accept-encoding"} if plain else set())
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in dropped]
        swaps = {p: (f, c.ref) for p, (f, c) in session.luna_swaps.items()} if endpoint.provider == "luna" else {}
        call = ForwardCall(endpoint.provider, request.method, origin + (path or request.raw_path), headers,
                           {endpoint.provider: endpoint.chosen.ref}, region=region, service=service, session=True,
                           swaps=swaps, official_host=official_host, granted_host=granted_host)
        try:
            reply = await self._forwarder.forward(call, body)
        except QpuBrokerError as exc:
            if isinstance(exc, NotFoundError):
                return _error(web, 404, f"the {endpoint.provider} token {endpoint.chosen.token_name!r} of this session "
                                        f"is gone ({exc})")
            return _error(web, 423 if isinstance(exc, LockedError) else _HTTP_STATUS.get(exc.code, 500), str(exc))
        headers = [(k, v) for k, v in reply.headers if k.lower() not in _RESPONSE_DROP]
        try:
            if scheme.session_rewrites_urls and _rewritable(headers):
                return await _rewritten(web, reply.status, headers, reply.body, origin, endpoint.url)
            if learn is not None and reply.status == 200 and _rewritable(headers):
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



def _rewritable(headers: list[tuple[str, str]]) -> bool:
    """JSON as plain bytes (the session asked for no compression; an answer compressed anyway
    is passed on as it is)."""
    if content_encoding(headers) != "identity":
        return False
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "").split(";")[0].strip().lower()
    return content_type.endswith(("/json", "+json"))


async def _rewritten(web, status: int, headers: list[tuple[str, str]], body: AsyncIterator[bytes], origin: str,
                     session_url: str) -> web.Response:
    """A JSON answer with the upstream origin's absolute URLs pointing at the session instead.
    Only the origin this request went to: a URL elsewhere is not the session's to serve."""
    from multidict import CIMultiDict

    text = await read_whole(body, REWRITE_LIMIT)
    if text is None:
        return _error(web, 502, f"a JSON answer of more than {REWRITE_LIMIT} bytes from {origin}: too large "
                                "for a session to rewrite its URLs")
    for old, new in ((origin + "/", session_url + "/"), (_escaped(origin + "/"), _escaped(session_url + "/"))):
        text = text.replace(old.encode(), new.encode())
    return web.Response(status=status, body=text, headers=CIMultiDict(without_length(headers)))


async def _read_by(web, learn: Callable[[bytes], None], status: int, headers: list[tuple[str, str]],
                   body: AsyncIterator[bytes]) -> web.Response:
    """A JSON answer read whole by `learn`, then passed on as it came."""
    from multidict import CIMultiDict

    text = await read_whole(body, REWRITE_LIMIT)
    if text is None:
        return _error(web, 502, f"a JSON answer of more than {REWRITE_LIMIT} bytes: too large for a session to read")
    learn(text)
    return web.Response(status=status, body=text, headers=CIMultiDict(without_length(headers)))


def _escaped(url: str) -> str:
    return url.replace("/", "\\/")  # JSON may write "/" as "\/"


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
    """An answer from qpu-broker itself, never from the provider: said so in a header too."""
    return web.json_response({"detail": f"qpu-broker: {message}"}, status=status,
                             headers={"X-Qpu-Broker-Error": "1"})
