"""The QPU providers qpu-broker knows, and the environment variables of each."""

from __future__ import annotations

from .errors import InvalidArgumentError

PROVIDERS: tuple[str, ...] = ("ibm", "dwave", "aws", "qctrl", "fujitsu", "ionq", "luna")


def check_provider(provider: str) -> str:
    """Return `provider` if known, else raise InvalidArgumentError listing the known ones."""
    if provider not in PROVIDERS:
        raise InvalidArgumentError(
            f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}"
        )
    return provider
