"""Handlers wrapped once, as they are registered, instead of by grpc.aio interceptors.

An interceptor does its work on every call: a coroutine, the handler looked up and rebuilt around
the call. That was a measured part of the daemon's cost per call (docs/performance.md, issue 26).
`WrappedServer` is the server as the generated `add_*Servicer_to_server` functions see it: each
method's handler goes through `wraps` once, when it is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

Wrap = Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]  # (handler, "/pkg.Service/Method")


class WrappedServer:
    """Registers on `server` each handler wrapped by `wraps`, in order (the last is outermost)."""

    def __init__(self, server: grpc.aio.Server, *wraps: Wrap) -> None:
        self._server = server
        self._wraps = wraps

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        for wrap in self._wraps:
            handler = wrap(handler, method)
        return handler

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self.wrap(h, f"/{service}/{name}") for name, h in handlers.items()})

    def add_generic_rpc_handlers(self, generic: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Wrapped(g, self.wrap) for g in generic))

    def add_reflection(self, services: Iterable[str]) -> None:
        """What reflection.enable_server_reflection registers for a grpc.aio server (it checks the
        server's type, which this is not), through the wraps."""
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer((*services, reflection.SERVICE_NAME)), self)


class _Wrapped(grpc.GenericRpcHandler):
    """A generic handler's methods (those not registered by name), each wrapped once."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Wrap) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        handler = self._wrapped.get(method)
        if handler is None:
            handler = self._inner.service(details)
            if handler is None:
                return None  # an unknown method is not remembered: anyone can name any number of them
            handler = self._wrapped[method] = self._wrap(handler, method)
        return handler
