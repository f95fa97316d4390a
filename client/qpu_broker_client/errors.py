"""The one error tree of qpu-broker, shared by the daemon and its clients.

    QpuBrokerError                    (any other status)
    ├── NotFoundError                 NOT_FOUND          also a LookupError
    ├── AlreadyExistsError            ALREADY_EXISTS
    ├── InvalidArgumentError          INVALID_ARGUMENT   also a ValueError
    ├── PermissionDeniedError         PERMISSION_DENIED
    ├── FailedPreconditionError       FAILED_PRECONDITION
    │   └── LockedError               (the agent is locked)
    ├── UnauthenticatedError          UNAUTHENTICATED
    ├── UnavailableError              UNAVAILABLE        (also: no daemon answers)
    ├── ResourceExhaustedError        RESOURCE_EXHAUSTED
    └── DeadlineExceededError         DEADLINE_EXCEEDED

The daemon raises these; its gRPC layer turns each into its status code in one
place, and the client turns status codes back into these classes in one place
(`translate_rpc_errors`). Messages name the token, provider or host involved and
what to do; they never contain a secret. This module does not import grpc, so
domain code can raise these without depending on the transport.
"""

from __future__ import annotations

__all__ = [
    "ACCESS_EXPIRED_MARK",
    "DEVICE_REMOVED_MARK",
    "KEY_REVOKED_MARK",
    "LOCKED_MARK",
    "REMOVED_MARK",
    "ROLE_CHANGED_MARK",
    "THROTTLED_MARK",
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "LockedError",
    "NotFoundError",
    "PermissionDeniedError",
    "QpuBrokerError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "error_for_code",
]


class QpuBrokerError(Exception):
    """Base of every qpu-broker error; `code` is the gRPC status name.

    `mark` (optional) travels in the status's trailing metadata and says more
    than the code: which precondition failed, or why an org server ended a stream.
    """

    code = "UNKNOWN"

    def __init__(self, message: str = "", *, mark: str = "") -> None:
        super().__init__(message)
        self.mark = mark


class NotFoundError(QpuBrokerError, LookupError):
    code = "NOT_FOUND"


class AlreadyExistsError(QpuBrokerError):
    code = "ALREADY_EXISTS"


class InvalidArgumentError(QpuBrokerError, ValueError):
    code = "INVALID_ARGUMENT"


class PermissionDeniedError(QpuBrokerError):
    code = "PERMISSION_DENIED"


class FailedPreconditionError(QpuBrokerError):
    code = "FAILED_PRECONDITION"


class LockedError(FailedPreconditionError):
    """The agent holds no data key: unlock it first."""


class UnauthenticatedError(QpuBrokerError):
    code = "UNAUTHENTICATED"


class UnavailableError(QpuBrokerError):
    code = "UNAVAILABLE"


class ResourceExhaustedError(QpuBrokerError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceededError(QpuBrokerError):
    code = "DEADLINE_EXCEEDED"


_BY_CODE = {
    cls.code: cls
    for cls in (
        NotFoundError,
        AlreadyExistsError,
        InvalidArgumentError,
        PermissionDeniedError,
        FailedPreconditionError,
        UnauthenticatedError,
        UnavailableError,
        ResourceExhaustedError,
        DeadlineExceededError,
    )
}

# Marks (trailing metadata) that say more than a status code, without parsing messages:
LOCKED_MARK = "locked"  # FAILED_PRECONDITION: the agent is locked
REMOVED_MARK = "removed"  # UNAUTHENTICATED: the org server removed this user
KEY_REVOKED_MARK = "key-revoked"  # UNAUTHENTICATED: this login's code or key was withdrawn (rotate-key), or used
DEVICE_REMOVED_MARK = "device-removed"  # UNAUTHENTICATED: an admin removed this device, or it expired
ACCESS_EXPIRED_MARK = "access-expired"  # UNAUTHENTICATED: a device's access token expired: get a new one, try again
ROLE_CHANGED_MARK = "role-changed"  # UNAVAILABLE: the user's role changed; reconnect to learn it
THROTTLED_MARK = "throttled"  # RESOURCE_EXHAUSTED: inside a back-off (not logged per call)


def error_for_code(code_name: str, message: str, mark: str = "") -> QpuBrokerError:
    """The exception a client raises for a status code name, message and mark."""
    if code_name == "FAILED_PRECONDITION" and mark == LOCKED_MARK:
        return LockedError(message, mark=mark)
    return _BY_CODE.get(code_name, QpuBrokerError)(message, mark=mark)
