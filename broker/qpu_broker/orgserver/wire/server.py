"""Assembles the org server's gRPC server: its service, health checking and reflection, behind
the policy and auth interceptors, and binds it (TLS, or plain text on loopback for tests).

The interceptors wrap each method's handler once, here, rather than being handed to grpc, which
would run them (and their wrapping) again on every call: what they do for a call depends on its
method alone (auth reads the caller inside the wrapped handler), so one wrapping per method is
the same wrapping, without per-call coroutines and handler objects on the relay's path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from qpu_broker_client.errors import FailedPreconditionError
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from qpu_broker.common.org_limits import RELAY_MESSAGE_MAX
from qpu_broker.orgserver.relay import Relay
from qpu_broker.orgserver.service import OrgService
from qpu_broker.orgserver.throttle import Throttle
from qpu_broker.orgserver.wire.auth import OrgAuthInterceptor
from qpu_broker.orgserver.wire.servicer import OrgServicer, add_to_server
from qpu_broker.wire.interceptors import PolicyInterceptor


class _Details(NamedTuple):  # grpc.HandlerCallDetails of a method, as an interceptor reads it
    method: str
    invocation_metadata: tuple = ()


class _Handlers:
    """Takes every service's method handlers as grpc's generated code registers them."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers come to add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = handlers


def _given(handler: grpc.RpcMethodHandler) -> Callable[[_Details], Awaitable[grpc.RpcMethodHandler]]:
    async def continuation(details: _Details) -> grpc.RpcMethodHandler:
        return handler
    return continuation


async def _intercepted(handlers: _Handlers, interceptors: Sequence[grpc.aio.ServerInterceptor],
                       server: grpc.aio.Server) -> None:
    """Registers every handler with `server` wrapped by `interceptors` (the first outermost, as grpc orders them)."""
    for service, methods in handlers.services.items():
        wrapped = {}
        for name, handler in methods.items():
            for interceptor in reversed(interceptors):
                handler = await interceptor.intercept_service(_given(handler), _Details(f"/{service}/{name}"))
            wrapped[name] = handler
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        server.add_registered_method_handlers(service, wrapped)


async def org_server(service: OrgService, relay: Relay, throttle: Throttle) -> grpc.aio.Server:
    handlers = _Handlers()
    add_to_server(OrgServicer(service, relay), handlers)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), handlers)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(
        (org_pb2.DESCRIPTOR.services_by_name["OrgService"].full_name, reflection.SERVICE_NAME)), handlers)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", RELAY_MESSAGE_MAX),
                                      ("grpc.max_send_message_length", RELAY_MESSAGE_MAX),
                                      # grpc sets SO_REUSEPORT by default: a second server (another data dir)
                                      # would share the port and take members' logins at random.
                                      ("grpc.so_reuseport", 0)])
    await _intercepted(handlers, [PolicyInterceptor(), OrgAuthInterceptor(service, throttle)], server)
    return server


def bind(server: grpc.aio.Server, listen: str, tls: tuple[bytes, bytes] | None) -> int:
    """The port it listens on; `tls` is (key, certificate chain) PEM, None for plain text."""
    try:
        if tls is not None:
            return server.add_secure_port(listen, grpc.ssl_server_credentials([tls]))
        return server.add_insecure_port(listen)
    except RuntimeError:  # grpc's "Failed to bind": check_bindable passed, so something took the port since
        raise FailedPreconditionError(f"cannot listen on {listen}: grpc could not bind it (taken since it was "
                                      "checked?)") from None
