"""gRPC servicers: proto in, domain call, proto out. Nothing else lives here."""

from __future__ import annotations

import os
import time

from google.protobuf.timestamp_pb2 import Timestamp

from qpu_broker_client.errors import InvalidArgumentError
from qpu_broker_client.proto import agent_pb2, agent_pb2_grpc, tokens_pb2, tokens_pb2_grpc

from . import __version__
from .keys import KeySource
from .store import TokenRecord
from .vault import INLINE, ORGANIZATION, PERSONAL, Vault

KIND_FROM_PROTO = {
    tokens_pb2.TOKEN_KIND_UNSPECIFIED: PERSONAL,
    tokens_pb2.TOKEN_KIND_PERSONAL: PERSONAL,
    tokens_pb2.TOKEN_KIND_ORGANIZATION: ORGANIZATION,
    tokens_pb2.TOKEN_KIND_INLINE: INLINE,
}
KIND_TO_PROTO = {v: k for k, v in KIND_FROM_PROTO.items() if k != tokens_pb2.TOKEN_KIND_UNSPECIFIED}
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


def _timestamp(us: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def token_to_proto(record: TokenRecord) -> tokens_pb2.Token:
    return tokens_pb2.Token(
        id=record.id, name=record.name, provider=record.provider, kind=KIND_TO_PROTO[record.kind],
        created_at=_timestamp(record.created_us), updated_at=_timestamp(record.updated_us),
    )


class TokenServicer(tokens_pb2_grpc.TokenServiceServicer):
    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    def _find(self, selector: tokens_pb2.TokenSelector) -> TokenRecord:
        which = selector.WhichOneof("by")
        if which is None:
            raise InvalidArgumentError("name a token by id or by name")
        return self._vault.find(_kind(selector.kind), token_id=selector.id, name=selector.name)

    async def CreateToken(self, request, context):  # noqa: N802
        record = await self._vault.create(_kind(request.kind), request.name, request.provider,
                                          request.secret, request.request_id)
        return token_to_proto(record)

    async def GetToken(self, request, context):  # noqa: N802
        return token_to_proto(self._find(request.token))

    async def ListTokens(self, request, context):  # noqa: N802
        response = tokens_pb2.ListTokensResponse()
        kinds = (PERSONAL, ORGANIZATION) if request.kind == tokens_pb2.TOKEN_KIND_UNSPECIFIED else (_kind(request.kind),)
        for kind in kinds:
            records, total = self._vault.list(kind, request.provider, request.limit, request.offset)
            getattr(response, kind).extend(token_to_proto(r) for r in records)
            setattr(response, f"{kind}_total", total)
        return response

    async def UpdateToken(self, request, context):  # noqa: N802
        record = self._find(request.token)
        updated = await self._vault.update(
            record,
            name=request.name if request.HasField("name") else None,
            secret=request.secret if request.HasField("secret") else None,
        )
        return token_to_proto(updated)

    async def DeleteToken(self, request, context):  # noqa: N802
        await self._vault.delete(self._find(request.token))
        return tokens_pb2.DeleteTokenResponse()


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, vault: Vault, store_path: str, socket_path: str) -> None:
        self._vault = vault
        self._store_path = store_path
        self._socket_path = socket_path
        self._started = time.monotonic()

    async def Status(self, request, context):  # noqa: N802
        return agent_pb2.StatusResponse(
            locked=self._vault.locked, lock_reason=self._vault.lock_reason,
            key_source=_SOURCE_TO_PROTO[self._vault.source], personal_tokens=self._vault.count(),
            version=__version__, pid=os.getpid(), uptime_seconds=time.monotonic() - self._started,
            store_path=self._store_path, socket_path=self._socket_path,
        )

    async def Lock(self, request, context):  # noqa: N802
        self._vault.lock()
        return agent_pb2.LockResponse()

    async def Unlock(self, request, context):  # noqa: N802
        await self._vault.unlock(request.passphrase)
        return agent_pb2.UnlockResponse()

    async def ChangePassphrase(self, request, context):  # noqa: N802
        source = await self._vault.change_passphrase(request.old_passphrase, request.new_passphrase)
        return agent_pb2.ChangePassphraseResponse(key_source=_SOURCE_TO_PROTO[source])

    async def Check(self, request, context):  # noqa: N802
        checked, damaged = await self._vault.check()
        return agent_pb2.CheckResponse(checked=checked, damaged=[
            agent_pb2.DamagedToken(id=d.record.id, name=d.record.name, provider=d.record.provider, reason=d.reason)
            for d in damaged
        ])
