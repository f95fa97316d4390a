"""The QPU providers qpu-broker knows, and the environment variables of each."""

from __future__ import annotations

from .errors import InvalidArgumentError

PROVIDERS: tuple[str, ...] = ("ibm", "dwave", "aws", "qctrl", "fujitsu", "ionq", "luna")


def check_provider(provider: str) -> str:
    """The canonical (lower-case) name of a known provider, else InvalidArgumentError listing them.

    Case-insensitive: "IBM" and "ibm" are one provider."""
    canonical = provider.strip().lower()
    if canonical not in PROVIDERS:
        raise InvalidArgumentError(
            f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}"
        )
    return canonical
