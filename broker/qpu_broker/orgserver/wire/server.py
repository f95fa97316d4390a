"""Assembles the org server's gRPC server: its service, health checking and reflection, each
method's handler wrapped once by the policy and auth (wire/registration.py: no interceptor runs
per call), and binds it (TLS, or plain text on loopback for tests)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from qpu_broker_client.errors import FailedPreconditionError
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

from qpu_broker.common.org_limits import RELAY_MESSAGE_MAX
from qpu_broker.orgserver.relay import Relay
from qpu_broker.orgserver.service import OrgService
from qpu_broker.orgserver.throttle import Throttle
from qpu_broker.orgserver.wire.auth import OrgAuth
from qpu_broker.orgserver.wire.servicer import OrgServicer, add_to_server
from qpu_broker.wire.interceptors import with_policy
from qpu_broker.wire.registration import WrappedServer


def org_server(service: OrgService, relay: Relay, throttle: Throttle) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", RELAY_MESSAGE_MAX),
                                      ("grpc.max_send_message_length", RELAY_MESSAGE_MAX),
                                      # grpc sets SO_REUSEPORT by default: a second server (another data dir)
                                      # would share the port and take members' logins at random.
                                      ("grpc.so_reuseport", 0)])
    auth = OrgAuth(service, throttle)
    wrapped = WrappedServer(server, auth.wrap, with_policy)  # the policy outermost
    add_to_server(OrgServicer(service, relay, auth.admit_relayed), wrapped)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), wrapped)
    wrapped.add_reflection((org_pb2.DESCRIPTOR.services_by_name["OrgService"].full_name,))
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
