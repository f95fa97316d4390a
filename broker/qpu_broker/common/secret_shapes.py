"""Checks a secret's shape before it is sealed; never puts the secret in a message."""

from __future__ import annotations

import json
import re

from qpu_broker_client.errors import InvalidArgumentError

from qpu_broker.common.names import has_control_character

_AWS_KEY_ID = re.compile(r"[A-Z0-9]{16,128}")
_AWS_FIELDS = ("access_key_id", "secret_access_key", "session_token")
# A Fujitsu Quantum Cloud sign-in: what fujitsu-quantum's credentials.json holds (its names, auth.py's
# store_credentials) -> our canonical names. The refresh token is the secret; the access token and the
# expiry times in that file are dropped (the daemon trades the refresh token for its own).
FQC_FIELDS = {"ClientId": "client_id", "Username": "username", "RefreshToken": "refresh_token",
              "DeviceKey": "device_key"}
_FQC_DROPPED = frozenset({"AccessToken", "AccessTokenExpirationTime", "RefreshTokenExpirationTime"})
_FQC_REQUIRED = ("client_id", "username", "refresh_token")


def normalize_secret(provider: str, secret: bytes, max_bytes: int) -> bytes:
    """The bytes to seal: checked for size and shape; AWS sets made canonical JSON."""
    text = check_text(provider, secret, max_bytes)
    if provider == "aws":
        return _aws(text)
    if provider == "fujitsu_quantum":
        return json.dumps(fujitsu_quantum_parts(text), separators=(",", ":"), sort_keys=True).encode()
    return secret


def fujitsu_quantum_parts(text: str) -> dict[str, str]:
    """A Fujitsu Quantum Cloud sign-in as {client_id, username, refresh_token[, device_key]}, from
    fujitsu-quantum's credentials.json (on one line: `jq -c . credentials.json`) or our own names."""
    hint = ("a fujitsu_quantum credential is the JSON of fujitsu-quantum's credentials.json on one line "
            "(jq -c . ~/.fujitsu-quantum/credentials.json), or {\"client_id\", \"username\", \"refresh_token\"}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidArgumentError(f"the fujitsu_quantum credential does not parse as JSON: {hint}") from None
    if not isinstance(doc, dict):
        raise InvalidArgumentError(f"the fujitsu_quantum credential must be a JSON object: {hint}")
    known = set(FQC_FIELDS) | set(FQC_FIELDS.values()) | _FQC_DROPPED
    unknown = sorted(str(k)[:40] for k in doc if k not in known)
    if unknown:
        raise InvalidArgumentError(f"the fujitsu_quantum credential has unknown key(s) {', '.join(unknown)}: {hint}")
    parts: dict[str, str] = {}
    for key, value in doc.items():
        name = FQC_FIELDS.get(key, key)
        if key in _FQC_DROPPED or value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgumentError(f"the fujitsu_quantum credential's {name} must be a non-empty string")
        if name in parts:
            raise InvalidArgumentError(f"the fujitsu_quantum credential gives {name} twice")
        parts[name] = value.strip()
    missing = [f for f in _FQC_REQUIRED if f not in parts]
    if missing:
        raise InvalidArgumentError(f"the fujitsu_quantum credential is missing {', '.join(missing)}: {hint}")
    return parts


def check_text(provider: str, secret: bytes, max_bytes: int) -> str:
    """A secret as one line of UTF-8 text within the size limit; `provider` names it in errors."""
    if not secret:
        raise InvalidArgumentError(f"the {provider} secret is empty: paste the token itself")
    if len(secret) > max_bytes:
        raise InvalidArgumentError(
            f"the {provider} secret is {len(secret)} bytes, over the limit of {max_bytes}: "
            "check that you pasted a token, or raise limits.secret_max_bytes"
        )
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"the {provider} secret is not UTF-8 text: paste the token as text") from None
    if not text.strip():
        raise InvalidArgumentError(f"the {provider} secret is only white space: paste the token itself")
    if has_control_character(text):
        raise InvalidArgumentError(
            f"the {provider} secret contains a line break or control character: paste it on one line"
        )
    return text


def _aws(text: str) -> bytes:
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            raise InvalidArgumentError("the aws credential looks like JSON but does not parse") from None
        if not isinstance(doc, dict):
            raise InvalidArgumentError("the aws credential JSON must be an object")
        unknown = sorted(set(doc) - set(_AWS_FIELDS))
        if unknown:
            raise InvalidArgumentError(
                f"the aws credential JSON has unknown key(s) {', '.join(unknown)}: use {', '.join(_AWS_FIELDS)}"
            )
        parts = [doc.get(f) for f in _AWS_FIELDS]
        if any(p is not None and not isinstance(p, str) for p in parts):
            raise InvalidArgumentError("the aws credential JSON values must be strings")
    else:
        split = text.split(":")
        if len(split) not in (2, 3):
            raise InvalidArgumentError(
                "an aws credential is ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN] "
                'or {"access_key_id": ..., "secret_access_key": ..., "session_token": ...}'
            )
        parts = split + [None] * (3 - len(split))
    key_id, secret_key, session = (p.strip() if p else None for p in parts)
    if not key_id:
        raise InvalidArgumentError("the aws credential is missing its access key id (access_key_id)")
    if not secret_key:
        raise InvalidArgumentError("the aws credential is missing its secret access key (secret_access_key)")
    if not _AWS_KEY_ID.fullmatch(key_id):
        raise InvalidArgumentError("the aws access key id must be 16 to 128 upper-case letters and digits (like AKIA...)")
    doc = {"access_key_id": key_id, "secret_access_key": secret_key}
    if session:
        doc["session_token"] = session
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
