"""The one parsed URL of a request: what is checked is what is signed and sent.

A caller's URL is parsed once, by yarl (the parser aiohttp sends with), into a
`Url`. The destination check reads its host and port, SigV4 signs its host,
path and query, and the forwarder sends its text: two parsers that disagree
(urlsplit keeps full-width `ａｐｉ.ionq.co`, yarl sends to `api.ionq.co`) are how
allowlist bypasses are born.
"""

from __future__ import annotations

import dataclasses
import string

from qpu_broker_client.errors import InvalidArgumentError, PermissionDeniedError

DEFAULT_PORTS = {"https": 443, "http": 80}
# Escapes a judged path may not carry: a server that decodes before it resolves would see other
# segments ('/', '\\', '.') than were judged, or decode twice ('%': %252e is a dot the second time).
PATH_ESCAPES_REFUSED = frozenset(b"/\\.%")


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
    def resolved_path(self) -> str | None:
        """The path as the server will take it, for rules that judge paths; see resolved_path."""
        return resolved_path(self.path)

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


def resolved_path(path: str) -> str | None:
    """`path` (percent-encoded, as sent) as a server resolves it: percent-decoded, then dot
    segments removed (RFC 3986 5.2.4). None when servers may read it otherwise than this: an
    encoded '/', '\\', '.' or '%', a malformed escape, a backslash, anything but printable ASCII
    once decoded (overlong UTF-8 such as %c0%ae among it), an empty segment ('//', which nginx
    merges before it resolves '..'), or a segment of dots or of nothing but parameters ('..;',
    which Tomcat reads as '..')."""
    if not path.isascii():
        return None
    first, *escaped = path.split("%")
    decoded = bytearray(first.encode())
    for piece in escaped:
        if len(piece) < 2 or not all(c in string.hexdigits for c in piece[:2]):
            return None
        byte = int(piece[:2], 16)
        if byte in PATH_ESCAPES_REFUSED:
            return None
        decoded.append(byte)
        decoded += piece[2:].encode()
    text = decoded.decode("latin-1")
    if not all("!" <= c <= "~" for c in text) or "\\" in text or "//" in text:
        return None
    for segment in text.split("/"):
        if segment not in ("", ".", "..") and not segment.split(";", 1)[0].strip("."):
            return None
    return remove_dot_segments(text)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path: '/a/b/../c/./d' is '/a/c/d'."""
    out: list[str] = []
    segments = path.split("/")
    for segment in segments:
        if segment == "..":
            if len(out) > 1:  # out[0] is the empty segment before the leading '/'
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # '/a/..' is '/', a directory
    return "/".join(out) or "/"
