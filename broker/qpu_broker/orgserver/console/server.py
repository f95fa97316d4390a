"""The console's listener, beside the gRPC server in `serve`: HTTPS with the org's own certificate
and key (the files gRPC serves), plain HTTP only where gRPC may use it (loopback: listen.py's rule).
Its address goes into the store (meta `console_url`), so `console-login` on the data dir can print a
whole link; behind a proxy, `console-login --url` says the address people open instead."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import ssl
import sys
from collections.abc import Callable
from http import HTTPStatus

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from qpu_broker.common.url import netloc
from qpu_broker.orgserver.console.app import make_app, security_headers
from qpu_broker.orgserver.console.reader import Reader
from qpu_broker.orgserver.console.sessions import URL_META, Sessions
from qpu_broker.orgserver.service import OrgService
from qpu_broker.orgserver.store import OrgStore

log = logging.getLogger(__name__)
# A header line's bytes at most: aiohttp's 8190 is less than the chunked cookies an SSO proxy in front
# may set for the console's host (docs/deploy.md). The request line keeps aiohttp's 8190.
HEADER_FIELD_MAX = 32 * 1024
# A request's head (request line and headers) must arrive within this of the connection's start or of
# the answer before: aiohttp's keepalive timer runs from both and bytes arriving do not push it back,
# so a connection trickling a head (slowloris) is closed then (web_protocol.py: connection_made,
# _process_keepalive). aiohttp's default, 3630 s, let a few hundred such connections hold the console
# for an hour. Also how long an idle connection is kept between requests (a browser opens another).
HEAD_SECONDS = 10


class _AccessLog(AbstractAccessLogger):
    """One line a request: method, path without its query (a sign-in link's secret is in the
    query), status. Never a header (cookies) or a form."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("console %s %s %d %.1f ms", request.method, request.path[:200], response.status, time * 1000)


class _ProtocolLog(logging.LoggerAdapter):
    """aiohttp's own lines about a connection (web_protocol.py: RequestHandler.handle_error, start,
    log_exception, log_debug). A request its parser refuses is logged at ERROR with a traceback whose
    message quotes 100 bytes of the raw request: a cookie's value, a sign-in link's query. Here it
    is one line saying who and what, with neither; a console handler's bug is one line with the
    exception's kind and where it was raised, but not its text (it may quote what the request carried)."""

    def log(self, level: int, msg: object, *args: object, exc_info: object = None, **_: object) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1] if exc_info else None
        peer = args[0] if args and isinstance(args[0], str) else "a peer"  # handle_error's request.remote
        if isinstance(exc, HttpProcessingError):  # any peer can send one: not an error of the server's
            level, msg, args = min(level, logging.WARNING), "console: malformed request from %s refused (%d)", (peer, exc.code)
        elif exc is not None:
            frame = exc.__traceback__
            while frame is not None and frame.tb_next is not None:
                frame = frame.tb_next
            where = f"{pathlib.Path(frame.tb_frame.f_code.co_filename).name}:{frame.tb_lineno}" if frame else "?"
            msg, args = "console: internal error answering %s: %s at %s", (peer, type(exc).__name__, where)
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, *args)


class _Protocol(web.RequestHandler):
    """aiohttp's connection, but its own answers (handle_error: a request its parser refuses, a
    handler's bug) are not the application's and pass no on_response_prepare: aiohttp's quote up to
    100 bytes of the request and carry none of the security headers. Here: one line, the status and
    what it means, with the headers every console answer carries."""

    headers: dict[str, str]  # security_headers(...), set by _Server for each connection

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # its log line (_ProtocolLog) and its checks
        said = ("the console could not read this request, and did nothing with it" if status < 500
                else "the console failed to answer this request (its log says where)")
        response = web.Response(status=status, text=f"{status} {HTTPStatus(status).phrase}: {said}\n",
                                headers=self.headers)
        response.force_close()
        return response


class _Server(web.Server):
    headers: dict[str, str]  # set by _Runner

    def __call__(self) -> web.RequestHandler:
        protocol = _Protocol(self, loop=self._loop, **self._kwargs)
        protocol.headers = self.headers
        return protocol


class _Runner(web.AppRunner):
    """aiohttp's AppRunner whose connections are _Protocol's."""

    def __init__(self, app: web.Application, headers: dict[str, str], **kwargs) -> None:
        super().__init__(app, **kwargs)
        self._headers = headers

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the application's server, made (and the app frozen) as aiohttp does
        server.__class__ = _Server
        server.headers = self._headers
        return server


def tls_context(cert: pathlib.Path, key: pathlib.Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def start_console(service: OrgService, host: str, port: int, tls: tuple[pathlib.Path, pathlib.Path] | None,
                        name: str, open_store: Callable[[], OrgStore]) -> web.AppRunner:
    """Listening once this returns; `name`: the host the link is printed with (the certificate's first);
    `open_store`: another connection to the store, for the records' reads (reader.py)."""
    reader = Reader(open_store)
    runner = _Runner(make_app(service, Sessions(service.store), reader, secure=tls is not None),
                     security_headers(tls is not None), access_log_class=_AccessLog, access_log=log,
                     logger=_ProtocolLog(log), max_field_size=HEADER_FIELD_MAX, keepalive_timeout=HEAD_SECONDS)

    async def close_reader(_: web.Application) -> None:
        await asyncio.to_thread(reader.close)
    runner.app.on_cleanup.append(close_reader)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls_context(*tls) if tls is not None else None)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # the port the system chose, for port 0
    url = f"{'https' if tls else 'http'}://{netloc(name, bound)}"
    service.store.set_meta(URL_META, url)
    log.info("console listening on %s (%s)", url, "HTTPS" if tls else "no TLS, loopback only")
    return runner
