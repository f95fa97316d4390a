"""The HTTPS-proxy form of an exec session, for SDKs that build their URLs from host names.

qiskit-ibm-runtime derives iam., quantum., globalcatalog. and api.global-search-tagging.
hosts from one URL and drops its port, so no loopback base URL can stand in for them. Its
session is an HTTP proxy on 127.0.0.1 instead (HTTPS_PROXY, with the placeholder as the
proxy password), the way CyberArk's Secretless Broker injects credentials:
- CONNECT to one of the provider's hosts: the proxy terminates TLS with the session CA's
  leaf (the SDK trusts it through the session's CA bundle) and serves the requests inside
  with aiohttp, like a loopback session endpoint;
- CONNECT anywhere else: a plain tunnel, untouched, so the rest of the script's HTTPS works
  and verifies against the real roots;
- anything without the session's proxy credential: 407, and nothing is opened.
Its connections are admitted, proven (by the CONNECT's credential) and closed by the
session's ConnectionGate like a loopback endpoint's; the CONNECT head, the TLS handshake and
the requests inside keep the session deadlines (session_gate).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from qpu_broker.common.config import Config
from qpu_broker.forward.session_ca import SessionCA
from qpu_broker.forward.session_gate import ConnectionGate, HttpConnection, Ticket

log = logging.getLogger(__name__)
HEAD_LIMIT = 16 * 1024
TUNNEL_CONNECT_SECONDS = 30.0  # reaching another host for a plain tunnel: the network's time, not the client's
PROXY_USER = "qpu-broker"

Handler = Callable[[str, web.BaseRequest], Awaitable[web.StreamResponse]]


class SessionProxy:
    def __init__(self, placeholder: str, tls: SessionCA, intercepts: Callable[[str, int], bool],
                 handler: Handler, config: Callable[[], Config]) -> None:
        self._password = placeholder.encode()
        self._tls = tls
        self._intercepts = intercepts
        self._handler = handler
        self._config = config
        self._server: asyncio.AbstractServer | None = None
        self.url = ""

    async def start(self, gate: ConnectionGate, key: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            gate.factory(key, lambda ticket: _Connection(self, ticket, self._config())), "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def proxy_url(self) -> str:
        """The HTTPS_PROXY value: the placeholder is the proxy password."""
        return self.url.replace("http://", f"http://{PROXY_USER}:{self._password.decode()}@", 1)

    async def close(self) -> None:
        """Stop listening; the gate closes the connections."""
        if self._server is not None:
            self._server.close()
            self._server = None

    def authorized(self, value: str) -> bool:
        scheme, _, encoded = value.partition(" ")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True) if scheme.lower() == "basic" else b""
        except (binascii.Error, ValueError):
            decoded = b""
        _user, _, password = decoded.partition(b":")
        return hmac.compare_digest(password, self._password) and bool(decoded)


class _Connection(asyncio.Protocol):
    """One client connection: its CONNECT head, then TLS and aiohttp, or a tunnel."""

    def __init__(self, proxy: SessionProxy, ticket: Ticket, config: Config) -> None:
        self._proxy = proxy
        self._ticket = ticket
        self._config = config
        self._buffer = bytearray()
        self._task: asyncio.Task | None = None
        self._next: HttpConnection | None = None  # aiohttp's handler, once TLS is up
        self._upstream: asyncio.StreamWriter | None = None  # a plain tunnel's other end
        self._more = asyncio.Event()  # set by data_received while the head is read
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._ticket.attach(transport)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc) -> None:
        self._ticket.release()
        if self._next is None and self._task is not None:
            self._task.cancel()
        if self._upstream is not None:
            self._upstream.close()

    def data_received(self, data: bytes) -> None:
        if self._next is not None:
            self._next.data_received(data)
        elif self._upstream is not None:
            self._upstream.write(data)
        else:
            self._buffer += data
            self._more.set()
            if len(self._buffer) > HEAD_LIMIT + 65536:
                self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _answer(self, status: str, extra: str = "") -> None:
        body = f"qpu-broker: {status}\n".encode()
        assert self.transport is not None
        self.transport.write(f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\nConnection: close\r\n"
                             f"X-Qpu-Broker-Error: 1\r\n\r\n".encode() + body)
        self.transport.close()

    async def _head(self) -> bytes | None:
        try:
            async with asyncio.timeout(self._config.session_head_seconds):  # from the connection's start
                while b"\r\n\r\n" not in self._buffer:
                    if len(self._buffer) > HEAD_LIMIT:
                        return None
                    self._more.clear()
                    await self._more.wait()
        except TimeoutError:
            return None
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer = bytearray(rest)
        return head

    async def _serve(self) -> None:
        head = await self._head()
        if head is None:
            self.abort()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.rpartition(" ")[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if not self._proxy.authorized(headers.get("proxy-authorization", "")):
            log.warning("session proxy: a request without this session's credential was refused")
            self._answer("407 Proxy Authentication Required", 'Proxy-Authenticate: Basic realm="qpu-broker session"\r\n')
            return
        self._ticket.prove()
        host, _, port_text = target.rpartition(":")
        host = host.strip("[]").lower()
        if method != "CONNECT" or not host or not port_text.isdigit():
            self._answer("405 Method Not Allowed", "Allow: CONNECT\r\n")  # HTTPS only: plain HTTP has no secret to add
            return
        port = int(port_text)
        if self._proxy._intercepts(host, port):
            await self._terminate(host)
        else:
            await self._tunnel(host, port)

    async def _terminate(self, host: str) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(self.transport, self, self._proxy._tls.server_context, server_side=True,
                                       ssl_handshake_timeout=self._config.session_head_seconds)
        except (TimeoutError, OSError, ConnectionError):
            tls = None
        if tls is None:  # this protocol hears of no close once TLS has begun: the place is given back here
            self._ticket.close()
            return
        self.transport = tls
        # From here the TLS connection's protocol gives the place back when it closes.
        handler = HttpConnection(self._ticket, lambda request: self._proxy._handler(host, request), self._config)
        tls.set_protocol(handler)
        handler.connection_made(tls)
        self._next = handler
        if self._buffer:  # the request that came with the end of the handshake
            pending, self._buffer = bytes(self._buffer), bytearray()
            handler.data_received(pending)

    async def _tunnel(self, host: str, port: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TUNNEL_CONNECT_SECONDS)
        except (TimeoutError, OSError):
            self._answer("502 Bad Gateway")
            return
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._upstream = writer
        if self._buffer:
            writer.write(bytes(self._buffer))
            self._buffer = bytearray()
        try:
            while chunk := await reader.read(65536):
                self.transport.write(chunk)
        except OSError:
            pass
        finally:
            writer.close()
            self.transport.close()
