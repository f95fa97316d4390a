"""The client's one mapping from gRPC status codes back to qpu-broker errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

from .errors import QpuBrokerError, UnavailableError, error_for_code

# Trailing-metadata key with which the daemon marks errors that share a status
# code but need their own class (a locked agent among failed preconditions).
ERROR_MARK_KEY = "qpu-broker-error"
# grpc core's status details for a call that found no connection and was never sent.
NOT_SENT = "failed to connect to all addresses"


def _mark(exc: grpc.RpcError) -> str:
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == ERROR_MARK_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


def no_daemon(socket: str) -> UnavailableError:
    return UnavailableError(f"no qpu-broker daemon answers on {socket}: start one with 'qpu-broker daemon' "
                            "(or unset QPU_BROKER_NO_AUTOSTART)")


@contextlib.contextmanager
def translate_rpc_errors(socket: str) -> Iterator[None]:
    """Raise the QpuBrokerError subclass for any RpcError in the block."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else None) or ""
        if code is grpc.StatusCode.UNAVAILABLE and not details.startswith("qpu-broker:"):
            # The transport's own UNAVAILABLE: no daemon, or it went away mid-call.
            if details.startswith(NOT_SENT):
                raise no_daemon(socket) from exc
            raise UnavailableError(
                f"the qpu-broker daemon on {socket} went away during the call (stopped or killed?): "
                "it may or may not have taken effect; check, then retry"
            ) from exc
        if code is None:
            raise QpuBrokerError(details or str(exc)) from exc
        raise error_for_code(code.name, details.removeprefix("qpu-broker: "), _mark(exc)) from exc
