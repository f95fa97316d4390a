"""The only place that touches ciphers: AES-256-GCM, HKDF and Argon2id.

Key, nonce and associated data are always passed explicitly. Every failure to
open a sealed value raises `DecryptionError`, whatever the cause (wrong key,
flipped byte, value moved to another record), so callers cannot tell those
apart and neither can an attacker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
NONCE_SIZE = 12


class DecryptionError(Exception):
    """A sealed value did not open under this key and associated data."""


class ZeroKeyError(Exception):
    """An all-zero key: what a wiped key reads as. A bug, refused before any use."""


def refuse_zero_key(key: bytes) -> None:
    """The last guard: nothing is sealed, opened or derived under a key that is all zero (a
    seal under one would be acknowledged, read back as tampered, and open for anyone)."""
    if not any(key):
        raise ZeroKeyError("refusing to use an all-zero key (a wiped key was read): nothing was done with it")


def new_key() -> bytes:
    return os.urandom(KEY_SIZE)


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
    """Encrypt under a fresh random nonce; returns (nonce, ciphertext with tag)."""
    refuse_zero_key(key)
    nonce = os.urandom(NONCE_SIZE)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    refuse_zero_key(key)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated_data)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError("sealed value does not open") from exc


def derive_subkey(data_key: bytes, purpose: bytes) -> bytes:
    """A key for one purpose only (the audit log's chain): it opens nothing."""
    refuse_zero_key(data_key)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=b"qpu-broker " + purpose).derive(data_key)


def derive_kek(material: bytes, purpose: bytes) -> bytes:
    """A key-encryption key from high-entropy material (a key file, a credential)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=b"qpu-broker kek " + purpose).derive(material)


@dataclasses.dataclass(frozen=True)
class PassphraseKdf:
    """Argon2id parameters, stored beside the wrapped key they opened."""

    salt: bytes
    iterations: int
    memory_kib: int = 64 * 1024
    lanes: int = 4

    def derive(self, passphrase: bytes) -> bytes:
        return Argon2id(
            salt=self.salt, length=KEY_SIZE, iterations=self.iterations,
            lanes=self.lanes, memory_cost=self.memory_kib,
        ).derive(passphrase)

    def to_json(self) -> str:
        return json.dumps({"alg": "argon2id", "salt": self.salt.hex(), "iterations": self.iterations,
                           "memory_kib": self.memory_kib, "lanes": self.lanes})

    @classmethod
    def from_json(cls, text: str) -> PassphraseKdf:
        d = json.loads(text)
        if d.get("alg") != "argon2id":
            raise ValueError(f"unknown passphrase KDF {d.get('alg')!r}")
        return cls(bytes.fromhex(d["salt"]), int(d["iterations"]), int(d["memory_kib"]), int(d["lanes"]))


def calibrate_kdf(target_seconds: float = 0.25, clock: Callable[[], float] = time.perf_counter) -> PassphraseKdf:
    """Raise Argon2id's iterations until one derivation takes at least `target_seconds`."""
    kdf = PassphraseKdf(salt=os.urandom(16), iterations=2)
    while True:
        start = clock()
        kdf.derive(b"calibration")
        took = clock() - start
        if took >= target_seconds:
            return kdf
        # Cost is linear in iterations: jump most of the way, then confirm.
        factor = max(1.25, min(4.0, target_seconds / max(took, 1e-6) * 1.1))
        kdf = dataclasses.replace(kdf, iterations=int(kdf.iterations * factor) + 1)
