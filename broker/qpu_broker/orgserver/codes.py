"""Enrollment codes: shown once, stored only as a hash, good for enrolling devices and nothing else.

A code reads `qbe_<id>_<secret>`: the id finds its row, the secret is checked against its
SHA-256 in constant time. Codes carry 256 bits of entropy, so a fast hash is right here (a
slow KDF protects low-entropy passwords). The API keys of the release before had the same
shape with `qbo_`; the migration kept each key's hash as a one-use code, so an old key is
redeemed like a code (once) and works as nothing else.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import re

CODE_PREFIX, LEGACY_KEY_PREFIX = "qbe_", "qbo_"
_FORMAT = re.compile(r"(qbe|qbo)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
DEFAULT_EXPIRES_SECONDS = 7 * 86400
EXPIRES_MAX_SECONDS = 365 * 86400  # a code's life, and a service device's
USES_MAX = 1000  # devices one service code enrolls


@dataclasses.dataclass(frozen=True)
class NewCode:
    code_id: str
    code_hash: str
    code: str  # shown once to the admin, never stored or logged

    def __repr__(self) -> str:
        return f"NewCode(code_id={self.code_id!r}, code=[secure])"


def new_code() -> NewCode:
    code_id = os.urandom(8).hex()
    secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    return NewCode(code_id, hashlib.sha256(secret.encode()).hexdigest(), f"{CODE_PREFIX}{code_id}_{secret}")


def parse(code: str) -> tuple[str, str] | None:
    """(code id, secret) of a well-formed code (or old API key), else None."""
    m = _FORMAT.fullmatch(code.strip())
    return (m[2], m[3]) if m else None


def matches(secret: str, code_hash: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(secret.encode()).hexdigest(), code_hash)
