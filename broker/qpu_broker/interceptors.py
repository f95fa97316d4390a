"""Cross-cutting policy for every RPC: one log line each, and the one error mapping.

Handlers raise the QpuBrokerError subclasses of qpu_broker_client.errors; this
is the only place that turns them into gRPC status codes. A LockedError is also
marked in trailing metadata so clients can raise LockedError rather than its
parent. Anything else becomes INTERNAL with a message that carries no detail
(the detail goes to the log, by type and traceback only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
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
        if handler is None or handler.unary_unary is None:
            return handler  # streams (health Watch, reflection) pass as they are
        inner = handler.unary_unary
        method = details.method

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except QpuBrokerError as exc:
                code = exc.code
                if isinstance(exc, LockedError):
                    context.set_trailing_metadata(((ERROR_MARK_KEY, LOCKED_MARK),))
                await context.abort(grpc.StatusCode[exc.code], PREFIX + str(exc))
            except grpc.aio.AbortError:
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("internal error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, PREFIX + "internal error: see the daemon's log")
            finally:
                log.info("rpc %s %s %.2fms", method, code, (time.perf_counter() - start) * 1000)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
