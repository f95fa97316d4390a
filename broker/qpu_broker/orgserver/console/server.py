"""The console's listener, beside the gRPC server in `serve`: HTTPS with the org's own certificate
and key (the files gRPC serves), plain HTTP only where gRPC may use it (loopback: listen.py's rule).
Its address goes into the store (meta `console_url`), so `console-login` on the data dir can print a
whole link; behind a proxy, `console-login --url` says the address people open instead."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import ssl
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from qpu_broker.common.url import netloc
from qpu_broker.orgserver.console.app import make_app
from qpu_broker.orgserver.console.reader import Reader
from qpu_broker.orgserver.console.sessions import URL_META, Sessions
from qpu_broker.orgserver.service import OrgService
from qpu_broker.orgserver.store import OrgStore

log = logging.getLogger(__name__)


class _AccessLog(AbstractAccessLogger):
    """One line a request: method, path without its query (a sign-in link's secret is in the
    query), status. Never a header (cookies) or a form."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("console %s %s %d %.1f ms", request.method, request.path[:200], response.status, time * 1000)


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
    runner = web.AppRunner(make_app(service, Sessions(service.store), reader, secure=tls is not None),
                           access_log_class=_AccessLog, access_log=log)

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
