"""Who is calling the org server, and whether their role may: one interceptor.

The API key comes as `authorization: Bearer <key>` metadata. Failed keys are
throttled per peer and per key id (`throttle`) and each failure is logged with
the peer and the key id, never the key. Admin-only methods are listed here and
nowhere else; a member gets PERMISSION_DENIED saying an org admin must do it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from qpu_broker_client.errors import (
    THROTTLED_MARK,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)

from qpu_broker.orgserver import apikeys
from qpu_broker.orgserver.service import OrgService
from qpu_broker.orgserver.store import User
from qpu_broker.orgserver.throttle import Throttle, peer_address, throttled_peer
from qpu_broker.wire.interceptors import logged_where_raised, rewrap

log = logging.getLogger(__name__)

CALLER: contextvars.ContextVar[User] = contextvars.ContextVar("org_caller")
SERVICE = "/qpubroker.org.v1.OrgService/"
ADMIN_ONLY = {
    "CreateToken": "creating an organization token", "GetToken": "reading an organization token",
    "UpdateToken": "changing an organization token", "DeleteToken": "deleting an organization token",
    "AddUsers": "adding users", "ListUsers": "listing users", "RemoveUsers": "removing users",
    "AddGroup": "adding a group", "RemoveGroup": "removing a group", "ListGroups": "listing groups",
    "AddGroupMembers": "adding group members", "RemoveGroupMembers": "removing group members",
    "SetTokenAccess": "choosing who may use an organization token",
}


def _key(metadata: Any) -> str:
    """The API key sent, or "" (refused, and counted as a failure, like a wrong one)."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return ""


class OrgAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: OrgService, throttle: Throttle) -> None:
        self._service = service
        self._throttle = throttle

    def _authenticate(self, key: str, peer: str) -> User:
        """Every key is checked (a hash and an indexed read): the right one is always admitted,
        so nobody sharing an address or knowing a key id can lock its owner out. Wrong ones
        inside a back-off are refused as RESOURCE_EXHAUSTED without a log line each."""
        peers, key_ids = self._throttle.peers, self._throttle.key_ids
        unit = throttled_peer(peer)
        parsed = apikeys.parse(key) if key else None
        key_id = parsed[0] if parsed else ("(none)" if not key else "(malformed)")
        try:
            if not key:
                raise UnauthenticatedError("no API key: send it as 'authorization: Bearer <key>' metadata")
            user = self._service.authenticate(key)
        except UnauthenticatedError as exc:
            wait = max(peers.wait(unit), key_ids.wait(key_id))
            if wait:
                peers.refused(unit)
                raise ResourceExhaustedError(f"too many failed API keys from {peer} or for key id {key_id}: "
                                             f"try again in {wait:.1f} s", mark=THROTTLED_MARK) from None
            failures, backoff, refused = peers.failed(unit)
            key_ids.failed(key_id)
            if self._throttle.log.take(peer):
                log.warning("failed API key from %s (key id %s, failure %d from %s%s): %s; back-off %.1f s", peer,
                            key_id, failures, "this address" if unit == peer else unit,
                            f", {refused} refused meanwhile" if refused else "", exc.mark or "not valid", backoff)
            elif self._throttle.log.unlogged == 1:  # the first one past the budget: sum them up in a second
                asyncio.get_running_loop().call_later(1.0, self._log_unlogged)
            raise logged_where_raised(exc) from None
        # No back-off is cleared: a member mixing their own key in with guesses gains nothing.
        return user

    def _log_unlogged(self) -> None:
        line = self._throttle.log.summary()
        if line:
            log.warning("%s", line)

    def _admit(self, method: str, context: grpc.aio.ServicerContext) -> None:
        user = self._authenticate(_key(context.invocation_metadata()), peer_address(context.peer()))
        verb = ADMIN_ONLY.get(method.removeprefix(SERVICE))
        if verb and user.role != "admin":
            raise PermissionDeniedError(
                f"{verb} is for org admins, and {user.name!r} is a member: ask an org admin to do it")
        CALLER.set(user)

    async def intercept_service(self, continuation: Callable[..., Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE):
            return handler
        method = details.method

        def admitted(inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                self._admit(method, context)
                return await inner(request, context)
            return unary

        def admitted_stream(inner: Callable[..., AsyncIterator[Any]], _streamed: bool) -> Callable[..., AsyncIterator[Any]]:
            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                self._admit(method, context)
                async for item in inner(request, context):
                    yield item
            return stream

        return rewrap(handler, admitted, admitted_stream)
