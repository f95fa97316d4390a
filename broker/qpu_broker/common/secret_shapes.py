"""Checks a secret's shape before it is sealed; never puts the secret in a message. What shape each
provider's takes is its scheme's to say (`qpu_broker.providers.normalize_secret`)."""

from __future__ import annotations

import json

from qpu_broker_client.errors import InvalidArgumentError

from qpu_broker.common.names import has_control_character

# A Fujitsu Quantum Cloud sign-in: what fujitsu-quantum's credentials.json holds (its names, auth.py's
# store_credentials) -> our canonical names. The refresh token is the secret; the access token and the
# expiry times in that file are dropped (the daemon trades the refresh token for its own).
FQC_FIELDS = {"ClientId": "client_id", "Username": "username", "RefreshToken": "refresh_token",
              "DeviceKey": "device_key"}
_FQC_DROPPED = frozenset({"AccessToken", "AccessTokenExpirationTime", "RefreshTokenExpirationTime"})
_FQC_REQUIRED = ("client_id", "username", "refresh_token")


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
