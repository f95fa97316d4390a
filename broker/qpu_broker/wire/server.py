"""Assembles the gRPC server: our services, health checking and reflection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from qpu_broker_client.proto.qpubroker.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    organization_pb2,
    organization_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
)

from qpu_broker.forward.forwarder import Forwarder
from qpu_broker.forward.sessions import Sessions
from qpu_broker.org.access import OrgAccess
from qpu_broker.org.admin import OrgTokenAdmin
from qpu_broker.org.link import OrgLink
from qpu_broker.tokens.agent_lock import AgentLock
from qpu_broker.tokens.audit_log import AuditLog
from qpu_broker.tokens.auto_lock import Activity
from qpu_broker.tokens.personal import PersonalTokens
from qpu_broker.tokens.resolution import Resolver
from qpu_broker.wire.agent_servicer import AgentServicer
from qpu_broker.wire.interceptors import with_policy
from qpu_broker.wire.org_link import OrgClient
from qpu_broker.wire.organization_servicer import OrganizationServicer
from qpu_broker.wire.registration import WrappedServer
from qpu_broker.wire.request_servicer import RequestServicer
from qpu_broker.wire.session_servicer import SessionServicer
from qpu_broker.wire.token_servicer import TokenServicer

SERVICES = (
    tokens_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    requests_pb2.DESCRIPTOR.services_by_name["RequestService"].full_name,
    organization_pb2.DESCRIPTOR.services_by_name["OrganizationService"].full_name,
    sessions_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
)
# One message is at most a secret, a few names, or one body chunk; bodies
# stream in chunks, so this bounds the daemon's memory per call.
MAX_MESSAGE = 8 * 1024 * 1024
# Calls a status bar or health probe makes all day: not use, so they never keep the agent unlocked.
PASSIVE = frozenset({"/qpubroker.v1.AgentService/Status", "/qpubroker.v1.OrganizationService/Status"})


def build_server(agent: AgentLock, personal: PersonalTokens, forwarder: Forwarder, resolver: Resolver,
                 org: tuple[OrgLink, OrgAccess, OrgTokenAdmin, OrgClient], sessions: Sessions,
                 listen: str, socket_path: str, store_path: str,
                 hardening_problems: list[str], stop: asyncio.Event, activity: Activity,
                 reload: Callable[[], object], audit: AuditLog) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    def used(method: str) -> None:  # told of every call to our services
        if method not in PASSIVE:
            activity.touch()

    org_link, org_tokens, org_admin, org_client = org
    grpc_server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.so_reuseport", 0)])
    server = WrappedServer(grpc_server, lambda handler, method: with_policy(handler, method, used))
    tokens_pb2_grpc.add_TokenServiceServicer_to_server(TokenServicer(personal, org_tokens, org_admin), server)
    organization_pb2_grpc.add_OrganizationServiceServicer_to_server(OrganizationServicer(org_link, org_client), server)
    requests_pb2_grpc.add_RequestServiceServicer_to_server(RequestServicer(forwarder, resolver), server)
    sessions_pb2_grpc.add_SessionServiceServicer_to_server(SessionServicer(sessions), server)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(agent, personal, store_path, socket_path, hardening_problems, stop, reload, audit), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_reflection((*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    grpc_server.add_insecure_port(f"unix:{listen}")  # `socket_path` reached through its held directory
    return grpc_server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICES):
        await health_servicer.set(name, status)
