"""The QPU providers qpu-broker knows, the TokenProvider fields, and the LUNA_* variable of
each: the one home of these tables, for the client and the daemon alike."""

from __future__ import annotations

from .errors import InvalidArgumentError

PROVIDERS: tuple[str, ...] = ("ibm", "dwave", "aws", "qctrl", "fujitsu", "ionq", "luna")
# AWS also takes the tutorial's split form, in these fields of a TokenProvider.
AWS_SPLIT_FIELDS: tuple[str, ...] = ("aws_access_key", "aws_secret_access_key", "aws_session_token")
TOKEN_FIELDS: tuple[str, ...] = PROVIDERS + AWS_SPLIT_FIELDS
# The Luna SDK's environment variables, per field (aws takes its split form from the environment).
LUNA_ENV: dict[str, str] = {
    "ibm": "LUNA_IBM_TOKEN", "dwave": "LUNA_DWAVE_TOKEN", "qctrl": "LUNA_QCTRL_TOKEN",
    "fujitsu": "LUNA_FUJITSU_TOKEN", "ionq": "LUNA_IONQ_TOKEN", "luna": "LUNA_API_KEY",
}
LUNA_AWS_ENV: dict[str, str] = {"aws_access_key": "LUNA_AWS_ACCESS_KEY",
                                "aws_secret_access_key": "LUNA_AWS_SECRET_ACCESS_KEY",
                                "aws_session_token": "LUNA_AWS_SESSION_TOKEN"}


def check_provider(provider: str) -> str:
    """The canonical (lower-case) name of a known provider, else InvalidArgumentError listing them.

    Case-insensitive: "IBM" and "ibm" are one provider."""
    canonical = provider.strip().lower()
    if canonical not in PROVIDERS:
        raise InvalidArgumentError(
            f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}"
        )
    return canonical
