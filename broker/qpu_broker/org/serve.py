"""`qpu-broker org-server serve`: gRPC (TLS when given a certificate) until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import signal

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from qpu_broker_client.errors import FailedPreconditionError
from qpu_broker_client.proto import org_pb2, org_pb2_grpc

from ..interceptors import PolicyInterceptor
from ..notify import notify
from .auth import OrgAuthInterceptor
from .layout import OrgLayout
from .service import OrgService
from .servicer import OrgServicer

log = logging.getLogger(__name__)


async def serve(layout: OrgLayout, listen: str, tls_cert: pathlib.Path | None, tls_key: pathlib.Path | None) -> int:
    store, key = layout.open()
    service = OrgService(store, key)
    server = grpc.aio.server(interceptors=[PolicyInterceptor(), OrgAuthInterceptor(service)])
    org_pb2_grpc.add_OrgServiceServicer_to_server(OrgServicer(service), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    reflection.enable_server_reflection(
        (org_pb2.DESCRIPTOR.services_by_name["OrgService"].full_name, reflection.SERVICE_NAME), server)
    if tls_cert is not None:
        try:
            creds = grpc.ssl_server_credentials([(tls_key.read_bytes(), tls_cert.read_bytes())])
        except OSError as exc:
            raise FailedPreconditionError(f"cannot read the TLS certificate or key: {exc}") from None
        port = server.add_secure_port(listen, creds)
    else:
        log.warning("serving WITHOUT TLS on %s: API keys and org secrets cross the network in clear; "
                    "give --tls-cert and --tls-key outside tests", listen)
        port = server.add_insecure_port(listen)
    if not port:
        raise FailedPreconditionError(f"cannot listen on {listen}: is it in use, or not a HOST:PORT?")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = listen.rsplit(":", 1)[0]
    notify(f"READY=1\nMAINPID={os.getpid()}")
    log.info("org server for %r ready on %s:%d (%s)", service.org, host, port, "TLS" if tls_cert else "no TLS")
    await stop.wait()
    notify("STOPPING=1")
    await server.stop(grace=5)
    store.close()
    log.info("stopped")
    return 0
