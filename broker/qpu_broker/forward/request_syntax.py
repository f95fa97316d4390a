"""What a request's method, header fields and body digest may be before anything signs or sends
them (RFC 9110 syntax).

A SigV4 signature holds the method, the header names and values and the body's digest as lines of
its canonical request: a line break in one of them signs another request than the one checked.
"""

from __future__ import annotations

import re

from qpu_broker_client.errors import InvalidArgumentError

METHOD_MAX_CHARS = 32  # the longest registered method (UPDATEREDIRECTREF) has 17
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in a field value: all but HTAB
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def http_method(text: str) -> str:
    """`text` as a method (an RFC 9110 token), upper-cased as it is signed and sent."""
    if len(text) > METHOD_MAX_CHARS or not _TOKEN.fullmatch(text):
        raise InvalidArgumentError(f"{text[:METHOD_MAX_CHARS]!r} is not an HTTP method: give one like GET or POST "
                                   f"(ASCII letters, digits and !#$%&'*+-.^_`|~, at most {METHOD_MAX_CHARS})")
    return text.upper()


def check_headers(headers: list[tuple[str, str]]) -> None:
    """Every name a token, no value with a line break or another control character."""
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise InvalidArgumentError(f"{name[:64]!r} is not an HTTP header name (RFC 9110 token characters only)")
        if _CONTROL.search(value):
            raise InvalidArgumentError(f"the value of header {name} holds a line break or another control character")


def check_body_sha256(digest: str) -> None:
    """A body digest given rather than computed here (a relayed Sign's) is one: 64 lower-case hex digits."""
    if not _SHA256_HEX.fullmatch(digest):
        raise InvalidArgumentError("the body's SHA-256 must be 64 lower-case hex digits")
