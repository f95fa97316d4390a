"""gRPC servicers: proto in, domain call, proto out. Nothing else lives here."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.proto import (
    agent_pb2,
    agent_pb2_grpc,
    organization_pb2,
    organization_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
)
from qpu_broker_client.providers import check_provider
from qpu_broker_client.usage import KIND_TO_PROTO as CLIENT_KIND_TO_PROTO

from qpu_broker import __version__
from qpu_broker.common import hardening
from qpu_broker.keys.kek import KeySource
from qpu_broker.store.db import TokenRecord
from qpu_broker.tokens.org_tokens import OrgToken
from qpu_broker.tokens.vault import ORGANIZATION, PAGE_MAX, PERSONAL, Vault
from qpu_broker.wire.org_link import OrgLink
from qpu_broker.wire.proto_values import timestamp

# The client's table, read both ways (a token kind here is its QpuTokenType's value).
KIND_TO_PROTO = {kind.value: proto for kind, proto in CLIENT_KIND_TO_PROTO.items()}
KIND_FROM_PROTO = {proto: kind for kind, proto in KIND_TO_PROTO.items()} | {tokens_pb2.TOKEN_KIND_UNSPECIFIED: PERSONAL}
_SOURCE_TO_PROTO = {
    KeySource.KEY_FILE: agent_pb2.KEY_SOURCE_KEY_FILE,
    KeySource.PASSPHRASE: agent_pb2.KEY_SOURCE_PASSPHRASE,
    KeySource.CREDENTIAL: agent_pb2.KEY_SOURCE_CREDENTIAL,
}


def _kind(value: int) -> str:
    try:
        return KIND_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgumentError(f"unknown token kind {value}: use personal or organization") from None


def token_to_proto(record: TokenRecord) -> tokens_pb2.Token:
    return tokens_pb2.Token(
        id=record.id, name=record.name, provider=record.provider, kind=KIND_TO_PROTO[record.kind],
        created_at=timestamp(record.created_us), updated_at=timestamp(record.updated_us),
        expires_at=timestamp(record.expires_us) if record.expires_us else None,
    )


def org_token_to_proto(token: OrgToken) -> tokens_pb2.Token:
    return tokens_pb2.Token(
        id=token.handle, name=token.name, provider=token.provider, kind=tokens_pb2.TOKEN_KIND_ORGANIZATION,
        created_at=timestamp(token.created_us), updated_at=timestamp(token.updated_us),
    )


class TokenServicer(tokens_pb2_grpc.TokenServiceServicer):
    """Personal tokens go to the vault; organization tokens to the org link (and its server)."""

    def __init__(self, vault: Vault, org: OrgLink) -> None:
        self._vault = vault
        self._org = org

    def _find(self, selector: tokens_pb2.TokenSelector) -> TokenRecord:
        which = selector.WhichOneof("by")
        if which is None:
            raise InvalidArgumentError("name a token by id or by name")
        return self._vault.find(_kind(selector.kind), token_id=selector.id, name=selector.name)

    async def CreateToken(self, request, context):
        if _kind(request.kind) == ORGANIZATION:
            return org_token_to_proto(await self._org.create(request.name, check_provider(request.provider),
                                                             request.secret))
        record = await self._vault.create(_kind(request.kind), request.name, request.provider,
                                          request.secret, request.request_id, request.expires_in_seconds)
        return token_to_proto(record)

    async def GetToken(self, request, context):
        sel = request.token
        if _kind(sel.kind) == ORGANIZATION:
            return org_token_to_proto(await self._org.get(sel.id, sel.name))
        return token_to_proto(self._find(sel))

    async def ListTokens(self, request, context):
        response = tokens_pb2.ListTokensResponse()
        kinds = (PERSONAL, ORGANIZATION) if request.kind == tokens_pb2.TOKEN_KIND_UNSPECIFIED else (_kind(request.kind),)
        if PERSONAL in kinds:
            records, response.personal_total = self._vault.list(request.provider, request.limit, request.offset)
            response.personal.extend(token_to_proto(r) for r in records)
        if ORGANIZATION in kinds:
            org = self._org.tokens(check_provider(request.provider) if request.provider else "")
            end = request.offset + (request.limit or PAGE_MAX)
            response.organization.extend(org_token_to_proto(t) for t in org[request.offset:end])
            response.organization_total = len(org)
        return response

    async def UpdateToken(self, request, context):
        name = request.name if request.HasField("name") else None
        secret = request.secret if request.HasField("secret") else None
        sel = request.token
        if _kind(sel.kind) == ORGANIZATION:
            return org_token_to_proto(await self._org.update(sel.id, sel.name, name, secret))
        expires_in = request.expires_in_seconds if request.HasField("expires_in_seconds") else None
        return token_to_proto(await self._vault.update(self._find(sel), name=name, secret=secret,
                                                       expires_in=expires_in))

    async def DeleteToken(self, request, context):
        sel = request.token
        if _kind(sel.kind) == ORGANIZATION:
            await self._org.delete(sel.id, sel.name)
        else:
            await self._vault.delete(self._find(sel))
        return tokens_pb2.DeleteTokenResponse()


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, vault: Vault, store_path: str, socket_path: str, hardening_problems: list[str],
                 stop: asyncio.Event, reload: Callable[[], object]) -> None:
        self._vault = vault
        self._stop = stop
        self._reload = reload
        self._store_path = store_path
        self._socket_path = socket_path
        self._hardening_problems = hardening_problems
        self._started = time.monotonic()

    async def Status(self, request, context):
        warnings = list(self._hardening_problems)
        memory_locked = self._vault.key_memory_locked
        if not self._vault.locked and not memory_locked:
            warnings.append("the data key's memory could not be locked (mlock): it may be swapped out; "
                            "raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit)")
        if hardening.unlocked_buffers:
            warnings.append(f"{hardening.unlocked_buffers} cached secret buffer(s) could not be locked in memory "
                            "(mlock): they may be swapped out; raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit)")
        return agent_pb2.StatusResponse(
            locked=self._vault.locked, lock_reason=self._vault.lock_reason,
            key_source=_SOURCE_TO_PROTO[self._vault.source], personal_tokens=self._vault.count(),
            version=__version__, pid=os.getpid(), uptime_seconds=time.monotonic() - self._started,
            store_path=self._store_path, socket_path=self._socket_path, warnings=warnings,
            key_memory_locked=memory_locked,
        )

    async def Reload(self, request, context):
        self._reload()  # a bad config is INVALID_ARGUMENT naming the key; the running one stays
        return agent_pb2.ReloadResponse()

    async def Stop(self, request, context):
        asyncio.get_running_loop().call_soon(self._stop.set)  # after this answer is on its way
        return agent_pb2.StopResponse()

    async def Lock(self, request, context):
        self._vault.lock()
        return agent_pb2.LockResponse()

    async def Unlock(self, request, context):
        await self._vault.unlock(request.passphrase)
        return agent_pb2.UnlockResponse()

    async def ChangePassphrase(self, request, context):
        source = await self._vault.change_passphrase(request.old_passphrase, request.new_passphrase)
        return agent_pb2.ChangePassphraseResponse(key_source=_SOURCE_TO_PROTO[source])

    async def Check(self, request, context):
        if request.accept_rollback:
            await self._vault.accept_rollback()
        if self._vault.rollback:
            return agent_pb2.CheckResponse(rollback=self._vault.rollback)
        checked, damaged = await self._vault.check()
        return agent_pb2.CheckResponse(checked=checked, damaged=[
            agent_pb2.DamagedToken(id=d.record.id, name=d.record.name, provider=d.record.provider, reason=d.reason)
            for d in damaged
        ])


_STATES = {
    "not-logged-in": organization_pb2.OrgStatus.STATE_NOT_LOGGED_IN,
    "connecting": organization_pb2.OrgStatus.STATE_CONNECTING,
    "connected": organization_pb2.OrgStatus.STATE_CONNECTED,
    "disconnected": organization_pb2.OrgStatus.STATE_DISCONNECTED,
    "unavailable": organization_pb2.OrgStatus.STATE_UNAVAILABLE,
    "locked": organization_pb2.OrgStatus.STATE_LOCKED,
    "removed": organization_pb2.OrgStatus.STATE_REMOVED,
    "key-revoked": organization_pb2.OrgStatus.STATE_KEY_REVOKED,
}


class OrganizationServicer(organization_pb2_grpc.OrganizationServiceServicer):
    def __init__(self, org: OrgLink) -> None:
        self._org = org

    def _status(self) -> organization_pb2.OrgStatus:
        s = self._org.status()
        return organization_pb2.OrgStatus(
            state=_STATES[s.state], server=s.server, org=s.org, user=s.user, role=s.role, tokens=s.tokens,
            seconds_since_contact=s.seconds_since_contact, grace_seconds=s.grace_seconds, detail=s.detail)

    async def Login(self, request, context):
        await self._org.login(request.server, request.ca_pem, request.api_key)
        return self._status()

    async def Logout(self, request, context):
        await self._org.logout()
        return organization_pb2.LogoutResponse()

    async def Status(self, request, context):
        return self._status()
