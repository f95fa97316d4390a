"""API keys: shown once, stored only as a hash.

A key reads `qbo_<id>_<secret>`: the id finds the user's row, the secret is
checked against its SHA-256 in constant time. Keys carry 256 bits of entropy,
so a fast hash is right here (a slow KDF protects low-entropy passwords).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import re

_FORMAT = re.compile(r"qbo_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclasses.dataclass(frozen=True)
class NewKey:
    key_id: str
    key_hash: str
    key: str  # shown once to the user, never stored


def new_key() -> NewKey:
    key_id = os.urandom(8).hex()
    secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    return NewKey(key_id, hashlib.sha256(secret.encode()).hexdigest(), f"qbo_{key_id}_{secret}")


def parse(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    m = _FORMAT.fullmatch(key.strip())
    return (m[1], m[2]) if m else None


def matches(secret: str, key_hash: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(secret.encode()).hexdigest(), key_hash)
