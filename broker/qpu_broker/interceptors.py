"""Cross-cutting policy for every RPC: one log line each, and the one error mapping.

Handlers raise the QpuBrokerError subclasses of qpu_broker_client.errors; this
is the only place that turns them into gRPC status codes. A LockedError is also
marked in trailing metadata so clients can raise LockedError rather than its
parent. Anything else becomes INTERNAL with a message that carries no detail
(the detail goes to the log, by type and traceback only).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from qpu_broker_client.errors import LOCKED_MARK, LockedError, QpuBrokerError
from qpu_broker_client.rpc import ERROR_MARK_KEY

log = logging.getLogger("qpu_broker.rpc")
# The client strips this prefix; it tells our statuses from the transport's own.
PREFIX = "qpu-broker: "


class PolicyInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None and method.startswith("/qpubroker."):
            return grpc.stream_stream_rpc_method_handler(
                _stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and method.startswith("/qpubroker."):
            return grpc.unary_stream_rpc_method_handler(
                _stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # other streams (health Watch, reflection) pass as they are


async def _fail(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> str:
    """Abort the call with the status for `exc`; returns the code name logged."""
    if isinstance(exc, QpuBrokerError):
        mark = exc.mark or (LOCKED_MARK if isinstance(exc, LockedError) else "")
        if mark:
            context.set_trailing_metadata(((ERROR_MARK_KEY, mark),))
        await context.abort(grpc.StatusCode[exc.code], PREFIX + str(exc))
    log.error("internal error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, PREFIX + "internal error: see the daemon's log")
    return "INTERNAL"  # not reached: abort raises


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, QpuBrokerError) else "INTERNAL"


@contextlib.asynccontextmanager
async def _policy(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    """Around one call: map any error to its status, and log one line."""
    start, code = time.perf_counter(), "OK"
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to a status, in one place
        code = _code(exc)
        await _fail(context, method, exc)
    finally:
        log.info("rpc %s %s %.2fms", method, code, (time.perf_counter() - start) * 1000)


def _unary(inner: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _policy(context, method):
            return await inner(request, context)

    return call


def _stream(inner: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _policy(context, method):
            async for item in inner(request, context):
                yield item

    return call
