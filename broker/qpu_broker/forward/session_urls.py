"""How a session endpoint names a provider's official hosts in its own URLs, both ways.

For SDKs that follow absolute URLs the service puts in its answers (`session_rewrites_urls`:
D-Wave's Metadata API lists each region's SAPI endpoint, and hybrid solvers answer with a
`binary-ref` URL). One loopback endpoint serves every official host of the provider: the
first (the default) at its root, each other one under `/@HOST/`, so
`https://eu-central-1.cloud.dwavesys.com/sapi/v2/` is `http://127.0.0.1:PORT/@eu-central-1.cloud.dwavesys.com/sapi/v2/`.
JSON answers have the official hosts' URLs (and the configured origin that stood in for the
host asked) turned into the session's; requests under `/@HOST/` go to that host, which must be
one of the provider's official hosts (destination rules), never one named by the request alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from qpu_broker.forward.forwarder import content_encoding, read_whole, without_length
from qpu_broker.providers.base import Scheme

if TYPE_CHECKING:
    from aiohttp import web

HOST_MARK = "/@"  # "/@HOST/rest": the official HOST's "/rest"
REWRITE_LIMIT = 16 << 20  # JSON answers whose URLs a session rewrites are read whole; SAPI's are small


def routed(raw_path: str) -> tuple[str, str] | None:
    """(host, path) of a request under `/@HOST/`, as it came (the host lower-cased); None for
    a path of the default host."""
    if not raw_path.startswith(HOST_MARK):
        return None
    host, slash, rest = raw_path[len(HOST_MARK):].partition("/")
    return host.lower(), slash + rest


def session_base(scheme: Scheme, session_url: str, host: str) -> str:
    """Where the session serves the official `host` (no trailing slash)."""
    return session_url if host == scheme.hosts[0] else f"{session_url}{HOST_MARK}{host}"


def rewritable(headers: list[tuple[str, str]]) -> bool:
    """JSON as plain bytes (the session asked for no compression; an answer compressed anyway
    is passed on as it is: a session never decodes nor re-encodes a body)."""
    if content_encoding(headers) != "identity":
        return False
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "").split(";")[0].strip().lower()
    return content_type.endswith(("/json", "+json"))


def _pairs(scheme: Scheme, session_url: str, origin: str, host: str) -> list[tuple[str, str]]:
    """(upstream prefix, session prefix) for every official host, and for `origin`, the configured
    stand-in that answered for `host`."""
    pairs = [(f"https://{h}/", session_base(scheme, session_url, h) + "/") for h in scheme.hosts]
    if origin != f"https://{host}":
        pairs.append((origin + "/", session_base(scheme, session_url, host) + "/"))
    return pairs


async def rewritten(web, status: int, headers: list[tuple[str, str]], body: AsyncIterator[bytes], scheme: Scheme,
                    session_url: str, origin: str, host: str, error) -> web.Response:
    """A JSON answer from `origin` (standing for the official `host`) with the provider's absolute
    URLs pointing at the session instead. A URL elsewhere is not the session's to serve."""
    from multidict import CIMultiDict

    text = await read_whole(body, REWRITE_LIMIT)
    if text is None:
        return error(web, 502, f"a JSON answer of more than {REWRITE_LIMIT} bytes from {origin}: too large "
                               "for a session to rewrite its URLs")
    for old, new in _pairs(scheme, session_url, origin, host):
        for a, b in ((old, new), (_escaped(old), _escaped(new))):
            text = text.replace(a.encode(), b.encode())
    return web.Response(status=status, body=text, headers=CIMultiDict(without_length(headers)))


def _escaped(url: str) -> str:
    return url.replace("/", "\\/")  # JSON may write "/" as "\/"
