"""A requests adapter: `session.mount("https://", BrokerAdapter("dwave"))`."""

from __future__ import annotations

import io

from requests.adapters import HTTPAdapter
from urllib3 import HTTPResponse

from ..broker import Broker
from ..tokens import TokenProvider


class BrokerAdapter(HTTPAdapter):
    def __init__(self, provider: str, qpu_tokens: TokenProvider | None = None, *, broker: Broker | None = None) -> None:
        super().__init__()
        self.provider = provider
        self.qpu_tokens = qpu_tokens
        self.broker = broker or Broker()

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        body = _bytes(request.body)
        seconds = timeout[1] if isinstance(timeout, tuple) else timeout
        reply = self.broker.forward(request.method, request.url, provider=self.provider,
                                    headers=list(request.headers.items()), body=body,
                                    qpu_tokens=self.qpu_tokens, timeout=seconds)
        raw = HTTPResponse(body=io.BytesIO(reply.content), headers=reply.headers.multi_items(),
                           status=reply.status_code, preload_content=False, decode_content=True,
                           request_url=request.url)
        return self.build_response(request, raw)

    def close(self) -> None:
        super().close()
        self.broker.close()


def _bytes(body) -> bytes:
    """The body requests would send, as bytes: a string, a file, or an iterable of chunks
    (dwave-cloud-client sends its deflated problem uploads as a generator), unchanged."""
    if body is None:
        return b""
    if hasattr(body, "read"):
        body = body.read()
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    return b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in body)
