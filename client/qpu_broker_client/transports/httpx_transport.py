"""An httpx transport: `httpx.Client(transport=BrokerTransport("ionq"))` is broker-backed."""

from __future__ import annotations

import asyncio

import httpx

from ..broker import Broker
from ..tokens import TokenProvider


def _response(request: httpx.Request, reply) -> httpx.Response:
    # The body arrives as the provider sent it (still content-encoded); httpx decodes it.
    return httpx.Response(reply.status_code, headers=reply.headers.multi_items(),
                          stream=httpx.ByteStream(reply.content), request=request,
                          extensions={"http_version": (reply.http_version or "HTTP/1.1").encode()})


class BrokerTransport(httpx.BaseTransport):
    def __init__(self, provider: str, qpu_tokens: TokenProvider | None = None, *, broker: Broker | None = None,
                 timeout: float | None = None) -> None:
        self.provider = provider
        self.qpu_tokens = qpu_tokens
        self.broker = broker or Broker()
        self.timeout = timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        reply = self.broker.forward(request.method, str(request.url), provider=self.provider,
                                    headers=request.headers.multi_items(), body=request.read(),
                                    qpu_tokens=self.qpu_tokens, timeout=self.timeout)
        return _response(request, reply)

    def close(self) -> None:
        self.broker.close()


class AsyncBrokerTransport(httpx.AsyncBaseTransport):
    def __init__(self, provider: str, qpu_tokens: TokenProvider | None = None, *, broker: Broker | None = None,
                 timeout: float | None = None) -> None:
        self._sync = BrokerTransport(provider, qpu_tokens, broker=broker, timeout=timeout)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        sync = self._sync
        reply = await asyncio.to_thread(
            sync.broker.forward, request.method, str(request.url), provider=sync.provider,
            headers=request.headers.multi_items(), body=body, qpu_tokens=sync.qpu_tokens, timeout=sync.timeout)
        return _response(request, reply)

    async def aclose(self) -> None:
        self._sync.close()
