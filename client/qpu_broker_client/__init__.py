"""Python client of the qpu-broker daemon.

    from qpu_broker_client import Broker, QpuToken, TokenProvider

    broker = Broker()
    token = broker.qpu_token.create(name="My Personal IBM Token", provider="ibm",
                                    token=getpass.getpass(), token_type="personal")
"""

from .broker import (
    AgentStatus,
    Broker,
    CheckResult,
    DamagedToken,
    OrgStatus,
    ResolvedToken,
)
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

__version__ = "0.1.0"

__all__ = [
    "PROVIDERS",
    "AgentStatus",
    "AlreadyExistsError",
    "Broker",
    "CheckResult",
    "DamagedToken",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "ForwardResponse",
    "InvalidArgumentError",
    "LockedError",
    "NotFoundError",
    "OrgStatus",
    "PermissionDeniedError",
    "QpuBrokerError",
    "QpuToken",
    "QpuTokenSource",
    "QpuTokenType",
    "QpuTokenTypeEnum",
    "ResolvedToken",
    "ResourceExhaustedError",
    "Secret",
    "TokenProvider",
    "UnauthenticatedError",
    "UnavailableError",
    "__version__",
]
