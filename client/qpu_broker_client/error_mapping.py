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


def no_daemon(socket: str, off_by: str = "") -> UnavailableError:
    """`off_by`: the variable that kept a daemon from being started, if one did (only then is
    unsetting it advice: `status` never starts one, set or not)."""
    unset = f" (or unset {off_by}, which kept this client from starting one)" if off_by else ""
    return UnavailableError(f"no qpu-broker daemon answers on {socket}: start one with 'qpu-broker daemon'{unset}")


@contextlib.contextmanager
def translate_rpc_errors(socket: str, off_by: str = "") -> Iterator[None]:
    """Raise the QpuBrokerError subclass for any RpcError in the block.

    Raised `from None`: the user's traceback is one error with one cause, not grpc's
    _InactiveRpcError above ours saying the same thing ("During handling of the above
    exception..."); the RpcError stays on `__context__` for whoever debugs the transport."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else None) or ""
        if code is grpc.StatusCode.UNAVAILABLE and not details.startswith("qpu-broker:"):
            # The transport's own UNAVAILABLE: no daemon, or it went away mid-call.
            if details.startswith(NOT_SENT):
                raise no_daemon(socket, off_by) from None
            raise UnavailableError(
                f"the qpu-broker daemon on {socket} went away during the call (stopped or killed?): "
                "it may or may not have taken effect; check, then retry"
            ) from None
        if code is None:
            raise QpuBrokerError(details or str(exc)) from None
        raise error_for_code(code.name, details.removeprefix("qpu-broker: "), _mark(exc)) from None
