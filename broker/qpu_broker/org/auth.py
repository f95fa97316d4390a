"""Who is calling the org server, and whether their role may: one interceptor.

The API key comes as `authorization: Bearer <key>` metadata. Failed keys are
throttled per peer and per key id (`throttle`) and each failure is logged with
the peer and the key id, never the key. Admin-only methods are listed here and
nowhere else; a member gets PERMISSION_DENIED saying an org admin must do it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from qpu_broker_client.errors import (
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)

from . import apikeys
from .service import OrgService
from .store import User
from .throttle import Throttle, peer_address

log = logging.getLogger(__name__)

CALLER: contextvars.ContextVar[User] = contextvars.ContextVar("org_caller")
SERVICE = "/qpubroker.org.v1.OrgService/"
ADMIN_ONLY = {
    "CreateToken": "creating", "GetToken": "reading", "UpdateToken": "changing", "DeleteToken": "deleting",
}


def _key(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    raise UnauthenticatedError("no API key: send it as 'authorization: Bearer <key>' metadata")


class OrgAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: OrgService, throttle: Throttle) -> None:
        self._service = service
        self._throttle = throttle

    def _authenticate(self, key: str, peer: str) -> User:
        peers, key_ids = self._throttle.peers, self._throttle.key_ids
        wait = peers.wait(peer)
        if wait:
            peers.refused(peer)
            raise ResourceExhaustedError(f"too many failed API keys from {peer}: try again in {wait:.1f} s")
        parsed = apikeys.parse(key)
        key_id = parsed[0] if parsed else "(malformed)"
        try:
            user = self._service.authenticate(key)
        except UnauthenticatedError as exc:
            wait = key_ids.wait(key_id)
            failures, backoff, refused = peers.failed(peer)
            log.warning("failed API key from %s (key id %s, failure %d from this peer%s): %s; next attempt from it "
                        "in %.1f s", peer, key_id, failures, f", {refused} refused meanwhile" if refused else "",
                        exc.mark or "not valid", backoff)
            if wait:
                message = f"too many failed attempts for key id {key_id}: try again in {wait:.1f} s"
                raise ResourceExhaustedError(message) from None
            key_ids.failed(key_id)
            raise
        peers.clear(peer)
        key_ids.clear(key_id)
        return user

    def _admit(self, method: str, context: grpc.aio.ServicerContext) -> None:
        user = self._authenticate(_key(context.invocation_metadata()), peer_address(context.peer()))
        verb = ADMIN_ONLY.get(method.removeprefix(SERVICE))
        if verb and user.role != "admin":
            raise PermissionDeniedError(
                f"{verb} an organization token is for org admins, and {user.name!r} is a member: ask an org admin to do it")
        CALLER.set(user)

    async def intercept_service(self, continuation: Callable[..., Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE):
            return handler
        method = details.method
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                self._admit(method, context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self._admit(method, context)
            async for item in inner_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
