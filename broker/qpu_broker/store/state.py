"""The store's contents and write counter, authenticated together under the data key.

The generation anchor (store_anchor) catches an older store put back. Alone it
would not catch an older store whose `generation` was edited upward, nor one
given the newest store's counter: both live in the data dir. So each commit
also writes `state_mac`, an HMAC under a key derived from the data key over
(store id, generation, digest), where the digest is the XOR of one keyed term
per sealed value: a token's id and version (its `updated_us`, which its seal
binds, and which every write raises), and the org login's blob. A row deleted,
rotated or put back from an older copy changes the digest, and nobody without
the data key can make a MAC that matches. A row whose bytes were edited in place
keeps its term: its seal refuses it, and `check` names it alone.

The digest is kept in memory and updated per write (XOR in the new term, out the
old): no write scans the store. It is recomputed from every row once per
process, when the data key is first at hand, and compared (tokens/integrity.py,
`StoreIntegrity.verify_state`).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qpu_broker.store.db import Change

ORG_LOGIN = "meta:org_login"  # the name the org login's term goes by (token ids are hex: no clash)
_TERM = b"qpu-broker/v1/state-term\0"
_MAC = b"qpu-broker/v1/state-mac\0"


def state_key(data_key: bytes) -> bytes:
    """A key for this purpose only: it authenticates, and opens nothing."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"qpu-broker store state").derive(data_key)


class StateDigest:
    def __init__(self, key: bytes, versions: dict[str, bytes]) -> None:
        self._key = key
        self.value = 0
        for name, version in versions.items():
            self.value ^= self._term(name, version)

    def _term(self, name: str, version: bytes) -> int:
        return int.from_bytes(hmac.digest(self._key, _TERM + name.encode() + b"\0" + version, hashlib.sha256), "big")

    def after(self, changes: list[Change]) -> int:
        """The digest once `changes` are committed (self is unchanged until `advance`)."""
        value = self.value
        for change in changes:
            for version in (change.old, change.new):
                if version:
                    value ^= self._term(change.name, version)
        return value

    def mac(self, store_id: str, generation: int, value: int) -> bytes:
        message = _MAC + store_id.encode() + b"\0" + generation.to_bytes(8, "big") + value.to_bytes(32, "big")
        return hmac.digest(self._key, message, hashlib.sha256)

    def matches(self, store_id: str, generation: int, mac: bytes | None) -> bool:
        return mac is not None and hmac.compare_digest(mac, self.mac(store_id, generation, self.value))
