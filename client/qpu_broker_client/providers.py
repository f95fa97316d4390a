"""The QPU providers qpu-broker knows, the TokenProvider fields, and the LUNA_* variable of
each: the one home of these tables, for the client and the daemon alike."""

from __future__ import annotations

import re

from .errors import InvalidArgumentError

# `fujitsu` is the Digital Annealer's API key; `fujitsu_quantum` a Fujitsu Quantum Cloud sign-in (its
# Cognito refresh token): two services, two credentials (docs/sdks/fujitsu.md).
PROVIDERS: tuple[str, ...] = ("ibm", "dwave", "aws", "qctrl", "fujitsu", "ionq", "luna", "fujitsu_quantum")
# A provider defined in the daemon's config (`[providers.custom.NAME]`) or by an org: its name's shape.
# Whether one of that name is defined is the daemon's (or the org server's) to say.
CUSTOM_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
# AWS also takes the tutorial's split form, in these fields of a TokenProvider.
AWS_SPLIT_FIELDS: tuple[str, ...] = ("aws_access_key", "aws_secret_access_key", "aws_session_token")
TOKEN_FIELDS: tuple[str, ...] = PROVIDERS + AWS_SPLIT_FIELDS
# The providers a TokenProvider may give in parts, and their fields (the daemon's schemes say the same:
# providers/base.py's Scheme.split_fields).
SPLIT_FIELDS: dict[str, tuple[str, ...]] = {"aws": AWS_SPLIT_FIELDS}
# The provider whose config table takes `presign_max_seconds` (the daemon's config): the one whose
# scheme makes presigned URLs (SigV4 query authentication).
PRESIGN_PROVIDER = "aws"
# The Luna SDK's environment variables, per field (aws takes its split form from the environment).
LUNA_ENV: dict[str, str] = {
    "ibm": "LUNA_IBM_TOKEN", "dwave": "LUNA_DWAVE_TOKEN", "qctrl": "LUNA_QCTRL_TOKEN",
    "fujitsu": "LUNA_FUJITSU_TOKEN", "ionq": "LUNA_IONQ_TOKEN", "luna": "LUNA_API_KEY",
}
LUNA_AWS_ENV: dict[str, str] = {"aws_access_key": "LUNA_AWS_ACCESS_KEY",
                                "aws_secret_access_key": "LUNA_AWS_SECRET_ACCESS_KEY",
                                "aws_session_token": "LUNA_AWS_SESSION_TOKEN"}
# What to set for a provider's token to come from the environment, as messages say it.
ENV_HINT: dict[str, str] = {**LUNA_ENV, "aws": " and ".join(LUNA_AWS_ENV[f] for f in AWS_SPLIT_FIELDS[:2])}


def check_provider(provider: str) -> str:
    """The canonical (lower-case) name of a built-in provider, or one a custom provider may have (the
    daemon says whether it is defined); else InvalidArgumentError listing them.

    Case-insensitive: "IBM" and "ibm" are one provider."""
    canonical = provider.strip().lower()
    if canonical not in PROVIDERS and not CUSTOM_NAME.fullmatch(canonical):
        raise InvalidArgumentError(
            f"unknown provider {provider[:40]!r}: use one of {', '.join(PROVIDERS)}, or a custom provider's name "
            "([providers.custom.NAME] in the daemon's config)"
        )
    return canonical
