"""Checks a secret's shape before it is sealed; never puts the secret in a message."""

from __future__ import annotations

import json
import re

from qpu_broker_client.errors import InvalidArgumentError

from qpu_broker.common.names import has_control_character

_AWS_KEY_ID = re.compile(r"[A-Z0-9]{16,128}")
_AWS_FIELDS = ("access_key_id", "secret_access_key", "session_token")


def normalize_secret(provider: str, secret: bytes, max_bytes: int) -> bytes:
    """The bytes to seal: checked for size and shape; AWS sets made canonical JSON."""
    text = check_text(provider, secret, max_bytes)
    if provider == "aws":
        return _aws(text)
    return secret


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
