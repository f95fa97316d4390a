"""The one parsed URL of a request: what is checked is what is signed and sent.

A caller's URL is parsed once, by yarl (the parser aiohttp sends with), into a
`Url`. The destination check reads its host and port, SigV4 signs its host,
path and query, and the forwarder sends its text: two parsers that disagree
(urlsplit keeps full-width `ａｐｉ.ionq.co`, yarl sends to `api.ionq.co`) are how
allowlist bypasses are born.
"""

from __future__ import annotations

import dataclasses

from qpu_broker_client.errors import InvalidArgumentError, PermissionDeniedError

DEFAULT_PORTS = {"https": 443, "http": 80}


def netloc(host: str, port: int) -> str:
    """The one spelling of host:port (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True)
class Url:
    text: str  # as it goes on the wire: normalised, without a fragment
    scheme: str
    host: str  # lower case, IDNA-encoded ASCII (what is connected to), IPv6 without brackets
    port: int  # the explicit port, or the scheme's default (0: neither)
    path: str  # percent-encoded, as sent
    query: str  # as sent
    has_userinfo: bool

    @property
    def netloc(self) -> str:
        return netloc(self.host, self.port)

    @property
    def host_header(self) -> str:
        """What an HTTP client sends as Host (the port only when not the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS.get(self.scheme) else f"{host}:{self.port}"

    def for_aiohttp(self):  # -> yarl.URL, already encoded: sent exactly as checked and signed
        import yarl

        return yarl.URL(self.text, encoded=True)


def parse_url(text: str, what: str, *, verbatim: bool = False) -> Url:
    """Parse once; `what` names the URL in errors ("the URL for ionq").

    `verbatim`: the caller sends the request itself (Sign), so its path and query are
    signed exactly as given, and only an ASCII URL is taken: the caller's HTTP client
    would apply its own IDNA and percent-encoding, which could differ from ours."""
    import yarl  # aiohttp's parser; imported on first use, like aiohttp, to keep start-up short

    if verbatim and not text.isascii():
        raise InvalidArgumentError(f"{what} must be ASCII as your HTTP client sends it: percent-encode the path "
                                   "and query, and give the host in its IDNA (xn--) form")
    try:  # yarl decodes lazily: every field is read inside the try
        url = yarl.URL(text, encoded=verbatim)
        return Url(str(url.with_fragment(None)), url.scheme, (url.raw_host or "").lower(),
                   url.port or DEFAULT_PORTS.get(url.scheme, 0), url.raw_path, url.raw_query_string,
                   "@" in (url.raw_authority or ""))
    except UnicodeError:
        raise PermissionDeniedError(f"{what} has a host that is not a valid name (IDNA): refused") from None
    except ValueError as exc:
        raise InvalidArgumentError(f"cannot parse {what}: {exc}") from None
