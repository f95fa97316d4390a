"""What a request's method, header fields and body digest may be before anything signs or sends
them (RFC 9110 syntax).

A SigV4 signature holds the method, the header names and values and the body's digest as lines of
its canonical request: a line break in one of them signs another request than the one checked. A
header sent upstream the same way: a name with a leading space (' Authorization') passes the
auth-header filter and goes out as an obs-fold line that a server joins to the header before it,
and CR, LF or NUL split or cut the request head. The other control characters are refused too:
they are outside the field grammar, and servers and proxies disagree on them (some take VT and
FF as whitespace). Bytes past ASCII (obs-text) pass, as the grammar allows.

An error names a header by its name, never by its value, which may be a secret; a bad name by
its position and the token characters it starts with, never what follows a ':' or a space (a
whole header pasted as a name would show its value there).
"""

from __future__ import annotations

import re

from qpu_broker_client.errors import InvalidArgumentError

METHOD_MAX_CHARS = 32  # the longest registered method (UPDATEREDIRECTREF) has 17
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in a field value: all but HTAB
_NAMED = {" ": "a space", "\t": "a tab", "\r": "a line break (CR)", "\n": "a line break (LF)", "\0": "a NUL"}
_SHOWN_MAX = 64  # what of a bad header name an error shows
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def http_method(text: str) -> str:
    """`text` as a method (an RFC 9110 token), upper-cased as it is signed and sent."""
    if len(text) > METHOD_MAX_CHARS or not _TOKEN.fullmatch(text):
        raise InvalidArgumentError(f"{text[:METHOD_MAX_CHARS]!r} is not an HTTP method: give one like GET or POST "
                                   f"(ASCII letters, digits and !#$%&'*+-.^_`|~, at most {METHOD_MAX_CHARS})")
    return text.upper()


def check_headers(headers: list[tuple[str, str]]) -> None:
    """Every name a token, no value with a line break or another control character."""
    for number, (name, value) in enumerate(headers, 1):
        if not _TOKEN.fullmatch(name):
            bad = next((i for i, c in enumerate(name) if not _TOKEN.fullmatch(c)), 0)
            what = "is empty" if not name else f"has {_char(name[bad])} at position {bad}"
            raise InvalidArgumentError(
                f"the name of header {number}{_shown(name)} {what}: a header name is an HTTP token (ASCII letters, "
                "digits and !#$%&'*+-.^_`|~, RFC 9110) with nothing around it")
        control = _CONTROL.search(value)
        if control:
            raise InvalidArgumentError(
                f"the value of header {name} holds {_char(control.group())}: HTTP field values hold no line break "
                "or other control character but tab (RFC 9110); remove it")


def check_body_sha256(digest: str) -> None:
    """A body digest given rather than computed here (a relayed Sign's) is one: 64 lower-case hex digits."""
    if not _SHA256_HEX.fullmatch(digest):
        raise InvalidArgumentError("the body's SHA-256 must be 64 lower-case hex digits")


def _char(c: str) -> str:
    return _NAMED.get(c) or (repr(c) if c.isprintable() else f"U+{ord(c):04X}")


def _shown(name: str) -> str:
    """The first run of token characters of a bad name: what it was meant to be ('Authorization' of
    ' Authorization'), and nothing after a ':' or a space, where a pasted value would sit."""
    run = _TOKEN.search(name)
    return f" ({run.group()[:_SHOWN_MAX]!r})" if run else ""
