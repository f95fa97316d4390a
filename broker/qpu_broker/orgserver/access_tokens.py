"""Access tokens: what a device's daemon sends with every call, for ACCESS_SECONDS at most.

`qbt_<device id>.<expires µs>.<MAC>`, the MAC an HMAC-SHA256 over the device id, the
expiry and the audience (the server name the device asked at) under a key derived from the
server key (which replicas share, so any replica that serves that name checks any replica's
tokens). A server takes only tokens for its own names: one a look-alike server collected (it
was made for the look-alike's name, which the daemon signed) is no good at the org. The MAC is checked before anything is read: a forged or expired token
costs no database read. The device's row (its user, its own expiry, whether it still exists)
is read after, on every call, so removal needs no token to expire. The user is not in the
MAC: a device id is random and never moves to another user, and its row names the user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from qpu_broker.keys import crypto

PREFIX = "qbt_"
ACCESS_SECONDS = 600  # an access token's life (never past its device's own expiry)
# Tokens whose MAC checked, kept: a device sends the same token with every call for ACCESS_SECONDS,
# and each check made an HMAC per server name. Past this many, the oldest goes.
CHECKED_KEPT = 4096
CLOCK_SKEW_SECONDS = 300  # how far a device's clock may be behind the server's when it asks for one
AHEAD_SECONDS = 60  # and ahead (each signature is taken once, after its time: a far-future one would wait)
_FORMAT = re.compile(r"qbt_([0-9a-f]{16})\.([0-9]{1,19})\.([A-Za-z0-9_-]{43})")


class AccessTokens:
    def __init__(self, server_key: bytes, names: tuple[str, ...]) -> None:
        self._key = crypto.derive_subkey(server_key, b"org/v2/device-access")
        self._names = names  # this server's own: the tokens it takes
        self._checked: dict[str, tuple[str, int]] = {}  # token -> check()'s answer, for those that checked

    def _mac(self, device_id: str, expires_us: int, audience: str) -> str:
        digest = hmac.new(self._key, f"{device_id}\0{expires_us}\0{audience}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def mint(self, device_id: str, expires_us: int, audience: str) -> str:
        return f"{PREFIX}{device_id}.{expires_us}.{self._mac(device_id, expires_us, audience)}"

    def check(self, token: str) -> tuple[str, int] | None:
        """(device id, expiry µs) of a token this org made for one of this server's names, expired
        or not; None for anything else. What a MAC proves never changes, so a token that checked
        is kept (what it names, the device and its user, is still read on every call)."""
        if (kept := self._checked.get(token)) is not None:
            return kept
        m = _FORMAT.fullmatch(token)
        if m is None or not any(hmac.compare_digest(self._mac(m[1], int(m[2]), name), m[3]) for name in self._names):
            return None
        if len(self._checked) >= CHECKED_KEPT:
            del self._checked[next(iter(self._checked))]
        checked = self._checked[token] = m[1], int(m[2])
        return checked


def device_id_of(token: str) -> str:
    """The device id a token names (for throttling and logs; nothing is trusted from it)."""
    m = _FORMAT.fullmatch(token)
    return m[1] if m else ""
