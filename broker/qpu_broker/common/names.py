"""Token names: one canonical form, so two names that look the same are the same name.

Names are NFC-normalised on the way in (create, rename) and on every lookup,
so "café" typed as e + U+0301 (NFD, as some keyboards and macOS file names do)
finds the token created as U+00E9 (NFC). Comparison stays case-sensitive.
"""

from __future__ import annotations

import unicodedata

from qpu_broker_client.errors import InvalidArgumentError


def canonical_name(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def has_control_character(text: str) -> bool:
    """C0 controls and DEL: line breaks and escapes that would break a log line or a terminal."""
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def check_name(name: str, max_chars: int, what: str = "a token name") -> str:
    """The canonical form of a name given to be stored, or InvalidArgumentError saying what is wrong."""
    name = canonical_name(name)
    if not name or not name.strip():
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(name) > max_chars:
        raise InvalidArgumentError(f"{what} may have at most {max_chars} characters; this one has {len(name)}")
    if has_control_character(name):
        raise InvalidArgumentError(f"{what} {name!r} contains a control character")
    return name
