"""How a personal token's secret is sealed in its row: the associated-data recipes.

Seal 2 binds a ciphertext to every field of its row; seal 1 (the first release) bound id,
kind and provider only. Old-style rows are genuine only in a store this release never wrote
(StoreIntegrity.first_release); the first time it has the key, it re-seals them.
"""

from __future__ import annotations

from qpu_broker.keys import crypto
from qpu_broker.store.db import Sealed, Store, TokenRecord

SEAL = 2  # the associated-data recipe new seals use


def token_ad(record: TokenRecord, key_term: int, seal: int) -> bytes:
    """Binds a ciphertext to every field of its row (seal 2): a row whose name, kind,
    provider, id or times were edited, or a ciphertext moved to another row, fails to open.
    Seal 1 (the first release) bound id, kind and provider only."""
    if seal == 1:
        return b"\0".join([b"qpu-broker/v1/token", record.id.encode(), record.kind.encode(),
                           record.provider.encode(), str(key_term).encode()])
    fields = [record.id, record.kind, record.name, record.provider, str(record.created_us), str(record.updated_us),
              str(record.expires_us), str(key_term)]
    # Length-prefixed, so no two different rows encode alike whatever their names hold.
    return b"qpu-broker/v2/token" + b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in fields)


def seal_token(key: bytes, key_term: int, record: TokenRecord, secret: bytes) -> Sealed:
    nonce, ciphertext = crypto.seal(key, secret, token_ad(record, key_term, SEAL))
    return Sealed(nonce, ciphertext, key_term, SEAL)


def open_token(key: bytes, record: TokenRecord, sealed: Sealed, *, old_seals: bool) -> bytes:
    """The secret; `crypto.DecryptionError` if the row was altered, or is old-style where none may be."""
    if sealed.seal < SEAL and not old_seals:
        # Every row was re-sealed when this release first opened the store: an old-style row
        # now is a planted one.
        raise crypto.DecryptionError
    return crypto.open_sealed(key, sealed.nonce, sealed.ciphertext, token_ad(record, sealed.key_term, sealed.seal))


def reseal_old_rows(store: Store, key: bytes, key_term: int) -> None:
    """Re-seal rows of an older recipe under the current one (inside the caller's write)."""
    for record, sealed in list(store.all_sealed()):
        if sealed.seal >= SEAL:
            continue
        try:
            plaintext = open_token(key, record, sealed, old_seals=True)
        except crypto.DecryptionError:
            continue  # damaged: left for 'check' to report; rotating it re-seals it
        store.replace_secret(record.id, seal_token(key, key_term, record, plaintext), record.updated_us,
                             record.expires_us)
    store.set_meta(seal=SEAL)
