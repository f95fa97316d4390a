"""Python client of the qpu-broker daemon.

    from qpu_broker_client import Broker, QpuToken, TokenProvider

    broker = Broker()
    token = broker.qpu_token.create(name="My Personal IBM Token", provider="ibm",
                                    token=getpass.getpass(), token_type="personal")

Names load on first use (PEP 562): the daemon imports this package's leaves (errors,
providers, paths) and must not pay for the client's channel and messages at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Each public name, and the module that holds it.
_HOMES = {
    "AgentStatus": "answers", "CheckResult": "answers", "DamagedToken": "answers", "OrgStatus": "answers",
    "ResolvedToken": "answers",
    "Broker": "broker",
    "AlreadyExistsError": "errors", "DeadlineExceededError": "errors", "FailedPreconditionError": "errors",
    "InvalidArgumentError": "errors", "LockedError": "errors", "NotFoundError": "errors",
    "PermissionDeniedError": "errors", "QpuBrokerError": "errors", "ResourceExhaustedError": "errors",
    "UnauthenticatedError": "errors", "UnavailableError": "errors",
    "PROVIDERS": "providers",
    "ForwardResponse": "responses",
    "Secret": "secret",
    "QpuToken": "tokens", "QpuTokenSource": "tokens", "QpuTokenType": "tokens", "QpuTokenTypeEnum": "tokens",
    "TokenProvider": "tokens",
}

__all__ = [  # the public API (tests/test_packaging.py holds it, and that _HOMES and the imports below agree)
    "PROVIDERS", "AgentStatus", "AlreadyExistsError", "Broker", "CheckResult", "DamagedToken", "DeadlineExceededError",
    "FailedPreconditionError", "ForwardResponse", "InvalidArgumentError", "LockedError", "NotFoundError", "OrgStatus",
    "PermissionDeniedError", "QpuBrokerError", "QpuToken", "QpuTokenSource", "QpuTokenType", "QpuTokenTypeEnum",
    "ResolvedToken", "ResourceExhaustedError", "Secret", "TokenProvider", "UnauthenticatedError", "UnavailableError",
    "__version__",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs, which do not run __getattr__
    from .answers import (
        AgentStatus,
        CheckResult,
        DamagedToken,
        OrgStatus,
        ResolvedToken,
    )
    from .broker import Broker
    from .errors import (
        AlreadyExistsError,
        DeadlineExceededError,
        FailedPreconditionError,
        InvalidArgumentError,
        LockedError,
        NotFoundError,
        PermissionDeniedError,
        QpuBrokerError,
        ResourceExhaustedError,
        UnauthenticatedError,
        UnavailableError,
    )
    from .providers import PROVIDERS
    from .responses import ForwardResponse
    from .secret import Secret
    from .tokens import (
        QpuToken,
        QpuTokenSource,
        QpuTokenType,
        QpuTokenTypeEnum,
        TokenProvider,
    )
