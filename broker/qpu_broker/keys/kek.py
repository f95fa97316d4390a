"""Key-encryption keys: where they come from, and wrapping the data key under one.

Every secret is sealed under one random data key. The data key is stored only
wrapped (AES-256-GCM) under a key-encryption key taken, for a new store, from
the first of: a systemd credential, a passphrase (set later with `qpu-broker
passphrase`), a key file made on first run. An existing store records which one
wraps it. Changing the passphrase re-wraps the data key only.
"""

from __future__ import annotations

import base64
import enum
import os
import pathlib
from collections.abc import Mapping

from qpu_broker.keys import crypto

CREDENTIAL_NAME = "qpu-broker.key"
MIN_MATERIAL = 16


class KeySource(str, enum.Enum):
    KEY_FILE = "key-file"
    PASSPHRASE = "passphrase"
    CREDENTIAL = "credential"


class KeyUnavailable(Exception):
    """The key-encryption key cannot be had; the message says why and what to do."""


def credential_path(environ: Mapping[str, str]) -> pathlib.Path | None:
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = pathlib.Path(directory) / CREDENTIAL_NAME
    return path if path.exists() else None


def read_material(path: pathlib.Path, what: str) -> bytes:
    try:
        material = path.read_bytes()
    except FileNotFoundError:
        raise KeyUnavailable(f"the {what} {path} is missing: restore it, then run 'qpu-broker unlock'") from None
    except OSError as exc:
        raise KeyUnavailable(f"cannot read the {what} {path}: {exc.strerror}") from exc
    if len(material.strip()) < MIN_MATERIAL:
        raise KeyUnavailable(f"the {what} {path} is too short to be a key: restore the right file")
    return material.strip()


def create_key_file(path: pathlib.Path) -> bytes:
    """Write a new random key file, 0600, failing if one is already there."""
    material = base64.urlsafe_b64encode(crypto.new_key())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(material + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return material


def kek_from_material(material: bytes, source: KeySource) -> bytes:
    return crypto.derive_kek(material, source.value.encode())


def _wrap_ad(source: KeySource) -> bytes:
    return b"qpu-broker/v1/data-key/" + source.value.encode()


def wrap(kek: bytes, data_key: bytes, source: KeySource) -> bytes:
    nonce, ciphertext = crypto.seal(kek, data_key, _wrap_ad(source))
    return nonce + ciphertext


def unwrap(kek: bytes, wrapped: bytes, source: KeySource) -> bytes:
    """The data key, or crypto.DecryptionError when `kek` is not the one that wrapped it."""
    nonce, ciphertext = wrapped[: crypto.NONCE_SIZE], wrapped[crypto.NONCE_SIZE :]
    return crypto.open_sealed(kek, nonce, ciphertext, _wrap_ad(source))
