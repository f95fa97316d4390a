"""Who is calling the org server, and whether their role may: one interceptor.

Every call but Enroll and DeviceToken carries a device's access token as
`authorization: Bearer qbt_…` metadata; Enroll (an enrollment code) and DeviceToken (a
device's signature) carry their proof in the request, and are the only calls without one.
Failures of all three are throttled per peer and per code or device id (`throttle`) and each
is logged with the peer and the id, never the code, token or signature. Admin-only methods
are listed here and nowhere else; anyone else gets PERMISSION_DENIED saying an org admin
must do it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from qpu_broker_client.errors import (
    ACCESS_EXPIRED_MARK,
    THROTTLED_MARK,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)

from qpu_broker.orgserver import codes
from qpu_broker.orgserver.access_tokens import device_id_of
from qpu_broker.orgserver.admin_record import ACTOR, Actor
from qpu_broker.orgserver.devices import Caller
from qpu_broker.orgserver.roles import ADMIN
from qpu_broker.orgserver.service import OrgService
from qpu_broker.orgserver.throttle import Throttle, peer_address, throttled_peer
from qpu_broker.wire.interceptors import logged_where_raised, rewrap

log = logging.getLogger(__name__)

CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("org_caller")
SERVICE = "/qpubroker.org.v1.OrgService/"
ADMIN_ONLY = {
    "CreateToken": "creating an organization token", "GetToken": "reading an organization token",
    "UpdateToken": "changing an organization token", "DeleteToken": "deleting an organization token",
    "AddUsers": "adding users", "ListUsers": "listing users", "RemoveUsers": "removing users",
    "AddGroup": "adding a group", "RemoveGroup": "removing a group", "ListGroups": "listing groups",
    "AddGroupMembers": "adding group members", "RemoveGroupMembers": "removing group members",
    "SetTokenAccess": "choosing who may use an organization token",
    "ListDevices": "listing devices", "RemoveDevice": "removing a device",
    "NewEnrollmentCode": "making enrollment codes", "ListAdminRecord": "reading the admin record",
    "SetQuota": "setting a quota", "RemoveQuota": "removing a quota",
    "ConsoleLink": "signing in to the web console",
}
# The calls that bring their own proof (no access token): what is throttled is named by the request.
UNAUTHENTICATED_CALLS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "Enroll": ("enrollment code", lambda request: (codes.parse(request.code) or ("(malformed)",))[0]),
    "DeviceToken": ("device proof", lambda request: request.device_id[:16] or "(none)"),
}


def _bearer(metadata: Any) -> str:
    """The access token sent, or "" (refused, and counted as a failure, like a wrong one)."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return ""


def _credential_id(token: str) -> str:
    """What a bearer is throttled and logged as: a device id, a code's id, never the secret."""
    if not token:
        return "(none)"
    parsed = codes.parse(token)
    return parsed[0] if parsed else device_id_of(token) or "(malformed)"


class OrgAuth:
    """Who calls: every OrgService method but enrollment's own needs a device's access token
    (admin methods an admin's), read from the call's metadata inside its wrapped handler."""

    def __init__(self, service: OrgService, throttle: Throttle) -> None:
        self._service = service
        self._throttle = throttle

    def _refused(self, exc: UnauthenticatedError, what: str, peer: str, cred_id: str) -> Exception:
        """What to raise for a failed proof. Every proof is checked (a MAC, a hash or a signature,
        and an indexed read): the right one is always admitted, so nobody sharing an address or
        knowing an id can lock its owner out. Wrong ones inside a back-off are refused as
        RESOURCE_EXHAUSTED without a log line each."""
        peers, ids = self._throttle.peers, self._throttle.key_ids
        unit = throttled_peer(peer)
        if exc.mark == ACCESS_EXPIRED_MARK:  # a real device whose token aged: no failure, it asks anew
            return exc
        wait = max(peers.wait(unit), ids.wait(cred_id))
        if wait:
            peers.refused(unit)
            return ResourceExhaustedError(f"too many failed attempts from {peer} or for id {cred_id}: "
                                          f"try again in {wait:.1f} s", mark=THROTTLED_MARK)
        failures, backoff, refused = peers.failed(unit)
        ids.failed(cred_id)
        if self._throttle.log.take(peer):
            log.warning("failed %s from %s (id %s, failure %d from %s%s): %s; back-off %.1f s", what, peer,
                        cred_id, failures, "this address" if unit == peer else unit,
                        f", {refused} refused meanwhile" if refused else "", exc.mark or "not valid", backoff)
        elif self._throttle.log.unlogged == 1:  # the first one past the budget: sum them up in a second
            asyncio.get_running_loop().call_later(1.0, self._log_unlogged)
        # No back-off is cleared by a success: a member mixing their own proof in with guesses gains nothing.
        return logged_where_raised(exc)

    def _log_unlogged(self) -> None:
        line = self._throttle.log.summary()
        if line:
            log.warning("%s", line)

    def _admit(self, method: str, context: grpc.aio.ServicerContext) -> None:
        token = _bearer(context.invocation_metadata())
        self._service.caught_up()  # the CLI's changes bind this call (kept standings: orgserver/kept.py)
        try:
            caller = self._service.devices.authenticate(token)
        except UnauthenticatedError as exc:
            raise self._refused(exc, "access token", peer_address(context.peer()), _credential_id(token)) from None
        verb = ADMIN_ONLY.get(method)
        if verb and caller.role != ADMIN:
            raise PermissionDeniedError(
                f"{verb} is for org admins, and {caller.name!r} is a {caller.role}: ask an org admin to do it")
        CALLER.set(caller)
        ACTOR.set(Actor(caller.name, caller.device_id, context.peer()))  # the admin record's who and from where

    def admit_relayed(self, context: grpc.aio.ServicerContext) -> None:
        """One call on a Relay stream, admitted again as a unary relayed call would be, with the
        stream's access token: a device removed, a user removed or a token expired since the
        stream opened refuses the next call (relay_stream.py)."""
        self._admit("Relay", context)

    def wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        """`handler` admitting only callers who prove who they are (wire/registration.WrappedServer)."""
        if not full_method.startswith(SERVICE):
            return handler  # health and reflection answer anyone
        method = full_method.removeprefix(SERVICE)
        proof = UNAUTHENTICATED_CALLS.get(method)

        def admitted(inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if proof is None:
                    self._admit(method, context)
                    return await inner(request, context)
                try:
                    return await inner(request, context)
                except UnauthenticatedError as exc:
                    raise self._refused(exc, proof[0], peer_address(context.peer()), proof[1](request)) from None
            return unary

        def admitted_stream(inner: Callable[..., AsyncIterator[Any]], _streamed: bool) -> Callable[..., AsyncIterator[Any]]:
            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                self._admit(method, context)
                async for item in inner(request, context):
                    yield item
            return stream

        return rewrap(handler, admitted, admitted_stream)
