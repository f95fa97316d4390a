"""A member's device key (Ed25519): what both ends of the org link agree a device proves.

The daemon makes the key pair and keeps the private half sealed in its store; the org server
keeps the public half. To get an access token the daemon signs `token_request` (a fixed
context, its device id, the time, the org store's id and the server name it connected to, so
a signature is good for one device, one org, one server name and a few minutes only); the
server checks it with `verifies`.
"""

from __future__ import annotations

import ipaddress

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

PUBLIC_KEY_SIZE, SIGNATURE_SIZE = 32, 64  # raw Ed25519
_CONTEXT = b"qpu-broker/org/v2/device-token\0"
_CONTEXT_V1 = b"qpu-broker/org/v1/device-token\0"  # before the server name was signed: refused, told to upgrade


def new_private_key() -> bytes:
    """32 raw bytes: the device's private key (kept sealed by the daemon, never sent)."""
    return Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_key(private_key: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def token_request(device_id: str, at_us: int, store_id: str, audience: str) -> bytes:
    """What a device signs to ask for an access token at the server named `audience` (the host
    name its TLS verification checked)."""
    return b"\0".join([_CONTEXT + device_id.encode(), str(at_us).encode(), store_id.encode(), audience.encode()])


def audience(host: str) -> str:
    """A server's host name as both ends compare it: lower case, no brackets or final dot, an IP
    address in its short form."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def token_request_v1(device_id: str, at_us: int, store_id: str) -> bytes:
    """What a daemon of the release before signed (no server name): recognised only to say so."""
    return b"\0".join([_CONTEXT_V1 + device_id.encode(), str(at_us).encode(), store_id.encode()])


def sign(private_key: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private_key).sign(message)


def verifies(public: bytes, signature: bytes, message: bytes) -> bool:
    if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
